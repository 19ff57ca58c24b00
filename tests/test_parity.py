"""Parity with transformers' DebertaV2 (the numerical reference) through the converter, fp32, padded batches."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForMaskedLM,
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DebertaV2Model,
)

from deberta_lite import DebertaLiteForSequenceClassification, DebertaLiteModel
from deberta_lite.convert import ConversionError, convert_checkpoint

from conftest import DATA, TINY, load_script, padded_batch, tiny_config


# The shared tiny model, in DebertaV2's terms (the relative-position fields vary per case below).
V2_TINY = {
    **{key: value for key, value in TINY.items() if key not in ("position_buckets", "max_relative_positions")},
    "relative_attention": True,
}

CASES = {
    # (a) DeBERTa-v3: buckets, shared keys, layer-normed relative table, no absolute input positions
    "v3": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
               pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0),
    # (b) DeBERTa v1: no buckets, separate position projections, c2p|p2c, no relative LayerNorm
    "v1": dict(max_relative_positions=-1, share_att_key=False, pos_att_type="c2p|p2c", position_biased_input=True,
               type_vocab_size=0),
    # (c) DeBERTa-v2-xlarge: the convolution after the first layer
    "v2_xlarge": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
                      pos_att_type="p2c|c2p", position_biased_input=False, conv_kernel_size=3, conv_act="gelu"),
    # (d) embedding_size != hidden_size, with two token types
    "embed_proj": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
                       pos_att_type="p2c|c2p", position_biased_input=False, embedding_size=16, type_vocab_size=2),
}


def _inputs(config):
    input_ids, attention_mask = padded_batch()
    token_type_ids = (torch.arange(12) >= 5).long().expand(3, 12).contiguous() if config.type_vocab_size else None
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def _convert(reference, tmp_path, name="lite"):
    source, target = tmp_path / "v2", tmp_path / name
    reference.save_pretrained(source)
    assert convert_checkpoint(source, target) == "deberta-v2->deberta-lite"
    return target


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_matches_debertav2(case, backend, tmp_path):
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES[case])).eval()
    lite = AutoModel.from_pretrained(_convert(reference, tmp_path), attn_implementation=backend).eval()
    assert isinstance(lite, DebertaLiteModel)
    inputs = _inputs(reference.config)
    expected = reference(**inputs, output_hidden_states=True)
    actual = lite(**inputs, output_hidden_states=True)
    assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for ours, theirs in zip(actual.hidden_states, expected.hidden_states):
        assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["v3", "v1"])
def test_sequence_classification_logits_match_debertav2(case, tmp_path):
    reference = DebertaV2ForSequenceClassification(DebertaV2Config(**V2_TINY, **CASES[case], num_labels=3)).eval()
    lite = AutoModelForSequenceClassification.from_pretrained(_convert(reference, tmp_path)).eval()
    assert isinstance(lite, DebertaLiteForSequenceClassification) and lite.config.num_labels == 3
    inputs = _inputs(reference.config)
    labels = torch.tensor([0, 2, 1])
    expected, actual = reference(**inputs, labels=labels), lite(**inputs, labels=labels)
    assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lite_to_debertav2_to_lite_is_lossless(case, tmp_path):
    config = DebertaV2Config(**V2_TINY, **CASES[case])
    lite = DebertaLiteForSequenceClassification(
        tiny_config(**{k: v for k, v in config.to_dict().items() if k in CASES[case]}, emd_num_layers=1)
    )
    lite.save_pretrained(tmp_path / "lite")
    assert convert_checkpoint(tmp_path / "lite", tmp_path / "v2") == "deberta-lite->deberta-v2"
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["model_type"] == "deberta-v2"
    # transformers loads the DebertaV2 side on its own and gives the same logits.
    v2 = DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "v2").eval()
    inputs = _inputs(config)
    assert_close(v2(**inputs).logits, lite.eval()(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert convert_checkpoint(tmp_path / "v2", tmp_path / "back") == "deberta-v2->deberta-lite"
    before, after = load_file(tmp_path / "lite" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    config_before = json.loads((tmp_path / "lite" / "config.json").read_text())
    config_after = json.loads((tmp_path / "back" / "config.json").read_text())
    config_before.pop("transformers_version"), config_after.pop("transformers_version")
    assert config_before == config_after


def test_absolute_position_table_goes_only_to_the_model_that_reads_it(tmp_path):
    # Original DeBERTa-v3 checkpoints carry the table the EMD needs, though DebertaV2 does not build it.
    table = torch.randn(64, 32)
    for name, reference in [("mlm", DebertaV2ForMaskedLM(DebertaV2Config(**V2_TINY, **CASES["v3"], legacy=False))),
                            ("encoder", DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v3"])))]:
        reference.save_pretrained(tmp_path / name / "v2")
        weights = load_file(tmp_path / name / "v2" / "model.safetensors")
        weights[("deberta." if name == "mlm" else "") + "embeddings.position_embeddings.weight"] = table
        save_file(weights, tmp_path / name / "v2" / "model.safetensors")
        convert_checkpoint(tmp_path / name / "v2", tmp_path / name / "lite")
    assert torch.equal(load_file(tmp_path / "mlm" / "lite" / "model.safetensors")[
        "deberta.embeddings.position_embeddings.weight"], table)
    # The encoder never reads it (position_biased_input=False): it is not carried, and so never an unused parameter.
    assert not any("position_embeddings" in key for key in load_file(tmp_path / "encoder" / "lite" / "model.safetensors"))
    assert DebertaLiteModel.from_pretrained(tmp_path / "encoder" / "lite").embeddings.position_embeddings is None


def test_tokenizer_files_are_copied(tmp_path):
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v3"]))
    reference.save_pretrained(tmp_path / "v2")
    shutil.copy(DATA / "spm" / "unigram_1000.model", tmp_path / "v2" / "spm.model")
    (tmp_path / "v2" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite")
    for name in ("spm.model", "tokenizer_config.json"):
        assert (tmp_path / "lite" / name).read_bytes() == (tmp_path / "v2" / name).read_bytes()


def test_unexpected_weight_is_an_error(tmp_path):
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v3"]))
    reference.save_pretrained(tmp_path / "v2")
    weights = load_file(tmp_path / "v2" / "model.safetensors")
    weights["encoder.layer.0.attention.self.mystery.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "v2" / "model.safetensors")
    with pytest.raises(ConversionError, match="mystery"):
        convert_checkpoint(tmp_path / "v2", tmp_path / "lite")


def test_missing_weight_is_an_error(tmp_path):
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v3"]))
    reference.save_pretrained(tmp_path / "v2")
    weights = load_file(tmp_path / "v2" / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, tmp_path / "v2" / "model.safetensors")
    with pytest.raises(ConversionError, match=r"layers\.1\.output\.dense\.weight"):
        convert_checkpoint(tmp_path / "v2", tmp_path / "lite")


def test_unsupported_architecture_is_an_error(tmp_path):
    reference = DebertaV2ForTokenClassification(DebertaV2Config(**V2_TINY, **CASES["v3"]))
    reference.save_pretrained(tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    (tmp_path / "v2" / "config.json").write_text(json.dumps({**config, "architectures": ["DebertaV2ForPreTraining"]}))
    with pytest.raises(ConversionError, match="DebertaV2ForPreTraining"):
        convert_checkpoint(tmp_path / "v2", tmp_path / "lite")


def test_pickle_weights_need_an_explicit_opt_in(tmp_path):
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v3"])).eval()
    source = tmp_path / "v2"
    reference.config.save_pretrained(source)
    torch.save(reference.state_dict(), source / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="allow_pickle"):
        convert_checkpoint(source, tmp_path / "refused")
    convert_checkpoint(source, tmp_path / "lite", allow_pickle=True)
    inputs = _inputs(reference.config)
    lite = AutoModel.from_pretrained(tmp_path / "lite").eval()
    assert_close(lite(**inputs).last_hidden_state, reference(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_convert_script(tmp_path):
    script = load_script("convert_checkpoint")
    reference = DebertaV2Model(DebertaV2Config(**V2_TINY, **CASES["v1"])).eval()
    reference.save_pretrained(tmp_path / "v2")
    script.main(["--input", str(tmp_path / "v2"), "--output", str(tmp_path / "lite")])
    inputs = _inputs(reference.config)
    lite = AutoModel.from_pretrained(tmp_path / "lite").eval()
    assert_close(lite(**inputs).last_hidden_state, reference(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):
        script.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")])
