"""The converter, scripts/convert_checkpoint.py over deberta_lite/convert.py: DebertaV2 <-> DeBERTa-lite directories
both ways, lossless round trips, tokenizer files copied, unexpected or missing weights and unsupported architectures
refused, pickle weights only on request.

What belongs here: what the converter writes, keeps or refuses. A test here compares outputs only to show the weights
landed where they belong; how closely DeBERTa-lite's outputs match DebertaV2's, layer by layer and on both backends,
is tests/test_parity.py's.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    DebertaV2ForMaskedLM,
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DebertaV2Model,
)

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification, DebertaLiteModel
from deberta_lite.convert import ConversionError, convert_checkpoint

from helpers import (
    CASES,
    DATA,
    POSITION_TABLE,
    assert_close_by_name,
    load_script,
    original_deberta_checkpoint,
    padded_batch,
    padded_inputs,
    save_pickled,
    tiny_config,
    v2_config,
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lite_to_debertav2_to_lite_is_lossless(case, tmp_path):
    config = v2_config(case)
    lite = DebertaLiteForSequenceClassification(
        tiny_config(**{k: v for k, v in config.to_dict().items() if k in CASES[case]}, emd_num_layers=1)
    )
    lite.save_pretrained(tmp_path / "lite")
    assert convert_checkpoint(tmp_path / "lite", tmp_path / "v2") == "deberta-lite->deberta-v2"
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["model_type"] == "deberta-v2"
    # transformers loads the DebertaV2 side on its own and gives the same logits.
    v2 = DebertaV2ForSequenceClassification.from_pretrained(tmp_path / "v2").eval()
    inputs = padded_inputs(config)
    assert_close(v2(**inputs).logits, lite.eval()(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert convert_checkpoint(tmp_path / "v2", tmp_path / "back") == "deberta-v2->deberta-lite"
    before = load_file(tmp_path / "lite" / "model.safetensors")
    assert_close_by_name(load_file(tmp_path / "back" / "model.safetensors"), before, rtol=0, atol=0)
    config_before = json.loads((tmp_path / "lite" / "config.json").read_text())
    config_after = json.loads((tmp_path / "back" / "config.json").read_text())
    config_before.pop("transformers_version"), config_after.pop("transformers_version")
    assert config_before == config_after


def test_absolute_position_table_goes_only_to_the_model_that_reads_it(tmp_path):
    # Original DeBERTa-v3 checkpoints carry the table the EMD needs, though DebertaV2 does not build it.
    table = torch.randn(64, 32)
    for name, reference in [
        ("mlm", DebertaV2ForMaskedLM(v2_config("v3", legacy=False))),
        ("encoder", DebertaV2Model(v2_config("v3"))),
    ]:
        reference.save_pretrained(tmp_path / name / "v2")
        weights = load_file(tmp_path / name / "v2" / "model.safetensors")
        weights[("deberta." if name == "mlm" else "") + "embeddings.position_embeddings.weight"] = table
        save_file(weights, tmp_path / name / "v2" / "model.safetensors")
        convert_checkpoint(tmp_path / name / "v2", tmp_path / name / "lite")
    assert torch.equal(load_file(tmp_path / "mlm" / "lite" / "model.safetensors")[POSITION_TABLE], table)
    # The encoder never reads it (position_biased_input=False): it is not carried, and so never an unused parameter.
    encoder_weights = load_file(tmp_path / "encoder" / "lite" / "model.safetensors")
    assert not any("position_embeddings" in key for key in encoder_weights)
    assert DebertaLiteModel.from_pretrained(tmp_path / "encoder" / "lite").embeddings.position_embeddings is None


def test_tokenizer_files_are_copied(tmp_path):
    DebertaV2Model(v2_config("v3")).save_pretrained(tmp_path / "v2")
    shutil.copy(DATA / "spm" / "unigram_1000.model", tmp_path / "v2" / "spm.model")
    (tmp_path / "v2" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite")
    for name in ("spm.model", "tokenizer_config.json"):
        assert (tmp_path / "lite" / name).read_bytes() == (tmp_path / "v2" / name).read_bytes()


@pytest.mark.parametrize(
    "change, error",
    [
        ("add encoder.layer.0.attention.self.mystery.weight", "mystery"),
        ("remove encoder.layer.1.output.dense.weight", r"layers\.1\.output\.dense\.weight"),
    ],
    ids=["unexpected", "missing"],
)
def test_unexpected_or_missing_weight_is_an_error_naming_it(change, error, tmp_path):
    action, key = change.split()
    DebertaV2Model(v2_config("v3")).save_pretrained(tmp_path / "v2")
    weights = load_file(tmp_path / "v2" / "model.safetensors")
    if action == "add":
        weights[key] = torch.zeros(2)
    else:
        del weights[key]
    save_file(weights, tmp_path / "v2" / "model.safetensors")
    with pytest.raises(ConversionError, match=error):
        convert_checkpoint(tmp_path / "v2", tmp_path / "lite")


def test_unsupported_architecture_is_an_error(tmp_path):
    DebertaV2ForTokenClassification(v2_config("v3")).save_pretrained(tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    (tmp_path / "v2" / "config.json").write_text(json.dumps({**config, "architectures": ["DebertaV2ForPreTraining"]}))
    with pytest.raises(ConversionError, match="DebertaV2ForPreTraining"):
        convert_checkpoint(tmp_path / "v2", tmp_path / "lite")


def test_pickle_weights_need_an_explicit_opt_in(tmp_path):
    reference = DebertaV2Model(v2_config("v3")).eval()
    save_pickled(reference, tmp_path / "v2")
    with pytest.raises(ConversionError, match="allow_pickle"):
        convert_checkpoint(tmp_path / "v2", tmp_path / "refused")
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite", allow_pickle=True)
    inputs = padded_inputs(reference.config)
    lite = AutoModel.from_pretrained(tmp_path / "lite").eval()
    assert_close(lite(**inputs).last_hidden_state, reference(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_convert_script(tmp_path):
    script = load_script("convert_checkpoint")
    reference = DebertaV2Model(v2_config("v1")).eval()
    reference.save_pretrained(tmp_path / "v2")
    script.main(["--input", str(tmp_path / "v2"), "--output", str(tmp_path / "lite")])
    inputs = padded_inputs(reference.config)
    lite = AutoModel.from_pretrained(tmp_path / "lite").eval()
    assert_close(lite(**inputs).last_hidden_state, reference(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):
        script.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")])


def test_conversion_with_debertav2_masked_lm_both_ways(tmp_path):
    reference = DebertaV2ForMaskedLM(v2_config("v3", legacy=False)).eval()
    reference.save_pretrained(tmp_path / "v2")
    assert any(key.startswith("lm_predictions.lm_head.") for key in load_file(tmp_path / "v2" / "model.safetensors"))
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite")
    # transformers has no EMD: with the EMD off both read the last layer and must agree.
    lite = AutoModelForMaskedLM.from_pretrained(tmp_path / "lite", emd_num_layers=0).eval()
    assert isinstance(lite, DebertaLiteForMaskedLM)
    input_ids, attention_mask = padded_batch()
    assert_close(
        lite(input_ids, attention_mask=attention_mask).logits,
        reference(input_ids, attention_mask=attention_mask).logits,
        atol=1e-5,
        rtol=1e-5,
    )
    convert_checkpoint(tmp_path / "lite", tmp_path / "back")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert {k for k in back if "lm_predictions" in k} == {
        "lm_predictions.lm_head.dense.weight",
        "lm_predictions.lm_head.dense.bias",
        "lm_predictions.lm_head.LayerNorm.weight",
        "lm_predictions.lm_head.LayerNorm.bias",
        "lm_predictions.lm_head.bias",
    }
    assert json.loads((tmp_path / "back" / "config.json").read_text())["legacy"] is False
    again = DebertaV2ForMaskedLM.from_pretrained(tmp_path / "back").eval()
    assert_close(
        again(input_ids, attention_mask=attention_mask).logits,
        reference(input_ids, attention_mask=attention_mask).logits,
    )


def test_original_style_checkpoint_becomes_masked_lm_with_its_position_table(tmp_path):
    _, table = original_deberta_checkpoint(tmp_path / "v2")
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite")
    lite = AutoModelForMaskedLM.from_pretrained(tmp_path / "lite")
    assert isinstance(lite, DebertaLiteForMaskedLM)
    assert torch.equal(lite.deberta.embeddings.position_embeddings.weight, table)
