"""Loading checkpoints with from_pretrained: every DeBERTa-lite class loads transformers' DebertaV2 checkpoints, and
the original DeBERTa ones, directly (the config translated, the weights renamed), from a directory or a Hub id; pickled
weights only with use_safetensors=False; an unreadable weights file is named in the error. The reference is the model
that was saved.

What belongs here: what from_pretrained accepts, refuses and reports. Converting directories with
scripts/convert_checkpoint.py is tests/test_convert.py's; Auto classes and remote code are tests/test_auto.py's.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    DebertaV2ForMaskedLM,
    DebertaV2ForMultipleChoice,
    DebertaV2ForQuestionAnswering,
    DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
    DebertaV2Model,
)

from deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
)

from helpers import (
    CASES,
    POSITION_TABLE,
    assert_close_by_name,
    hub_env,
    original_deberta_checkpoint,
    padded_batch,
    padded_inputs,
    run_python,
    save_pickled,
    tiny_config,
    v2_config,
)


CLASSES = [
    (DebertaLiteModel, DebertaV2Model),
    (DebertaLiteForSequenceClassification, DebertaV2ForSequenceClassification),
    (DebertaLiteForTokenClassification, DebertaV2ForTokenClassification),
    (DebertaLiteForQuestionAnswering, DebertaV2ForQuestionAnswering),
    (DebertaLiteForMultipleChoice, DebertaV2ForMultipleChoice),
]
# Three labels where the head's width is free (question answering has two outputs, multiple choice one).
NUM_LABELS = {DebertaV2ForSequenceClassification: 3, DebertaV2ForTokenClassification: 3}


def _reference(v2_class, case, **overrides):
    num_labels = NUM_LABELS.get(v2_class, 2)
    return v2_class(v2_config(case, num_labels=num_labels, **overrides)).eval()


def _inputs_for(model):
    inputs = padded_inputs(model.config)
    if model.__class__.__name__.endswith("ForMultipleChoice"):  # (examples, choices, sequence): two examples
        return {key: None if value is None else torch.stack([value, value.flip(0)]) for key, value in inputs.items()}
    return inputs


def assert_same_outputs(actual_model, expected_model):
    """Every output of both models (hidden states, logits, start/end logits) on a padded batch, in eval mode."""
    inputs = _inputs_for(expected_model)
    with torch.no_grad():
        actual, expected = actual_model.eval()(**inputs), expected_model.eval()(**inputs)
    assert_close_by_name(actual, expected, atol=1e-5, rtol=1e-5)


def assert_nothing_left_out(info, missing=()):
    """No random weights (nothing missing beyond `missing`), nothing dropped, nothing reshaped."""
    assert set(info["missing_keys"]) == set(missing)
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lite_class, v2_class", CLASSES, ids=[lite.__name__ for lite, _ in CLASSES])
def test_every_class_loads_the_matching_debertav2_checkpoint(lite_class, v2_class, case, tmp_path):
    reference = _reference(v2_class, case)
    reference.save_pretrained(tmp_path)
    lite, info = lite_class.from_pretrained(tmp_path, output_loading_info=True)
    assert type(lite) is lite_class and lite.config.model_type == "deberta-lite"
    assert lite.config.architectures == [lite_class.__name__]
    assert_nothing_left_out(info)
    assert_same_outputs(lite, reference)


# legacy=False leaves out embed_proj: transformers' head of that name projects to hidden_size, not embedding_size, so
# DebertaV2 itself cannot run it (a shape error in its forward).
@pytest.mark.parametrize(
    "case, legacy",
    [
        *[(case, False) for case in sorted(CASES) if case != "embed_proj"],
        *[(case, True) for case in sorted(CASES)],
    ],
)
def test_masked_lm_loads_either_debertav2_head(case, legacy, tmp_path):
    # legacy=False: the original DeBERTa names (lm_predictions.lm_head.*); legacy=True, transformers' default:
    # BERT-style names (cls.predictions.*).
    reference = _reference(DebertaV2ForMaskedLM, case, legacy=legacy)
    reference.save_pretrained(tmp_path)
    # transformers has no enhanced mask decoder: its head reads the last layer, as DeBERTa-lite's does without one.
    lite, info = DebertaLiteForMaskedLM.from_pretrained(tmp_path, emd_num_layers=0, output_loading_info=True)
    assert_nothing_left_out(info)
    assert_same_outputs(lite, reference)
    input_ids, attention_mask = padded_batch()
    labels = torch.where(attention_mask.bool() & (torch.arange(12) % 3 == 1), input_ids, -100)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask, labels=labels).loss
        assert_close(lite(input_ids, attention_mask=attention_mask, labels=labels).loss, expected)


@pytest.mark.parametrize("legacy", [False, True], ids=["lm_predictions", "cls_predictions"])
def test_masked_lm_with_the_emd_misses_only_the_absolute_table_transformers_did_not_save(legacy, tmp_path):
    # DebertaV2 builds no absolute table without input positions (v3), so its checkpoint has none for the EMD.
    reference = _reference(DebertaV2ForMaskedLM, "v3", legacy=legacy)
    reference.save_pretrained(tmp_path)
    with_emd, info = DebertaLiteForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert with_emd.uses_emd
    assert_nothing_left_out(info, missing=[POSITION_TABLE])
    without_emd = DebertaLiteForMaskedLM.from_pretrained(tmp_path, emd_num_layers=0)
    loaded = without_emd.state_dict()
    assert set(with_emd.state_dict()) - set(loaded) == {POSITION_TABLE}
    for key, value in loaded.items():
        assert torch.equal(with_emd.state_dict()[key], value), key


# Loads a loopback Hub repository (argv[1]) into DebertaLiteForSequenceClassification with the keyword arguments in
# argv[3] (JSON), in a fresh process (huggingface_hub reads HF_ENDPOINT when it is imported), and compares its logits
# with those saved in argv[2].
LOAD_FROM_HUB = """
    import json, sys
    import torch
    from deberta_lite import DebertaLiteForSequenceClassification

    repo_id, expected, kwargs = sys.argv[1], torch.load(sys.argv[2]), json.loads(sys.argv[3])
    model, info = DebertaLiteForSequenceClassification.from_pretrained(repo_id, output_loading_info=True, **kwargs)
    assert not any(info.values()), info
    with torch.no_grad():
        logits = model.eval()(**expected["inputs"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)
    print("loaded")
"""


def _publish(state, repo_id, directory):
    """The files of a checkpoint directory as the loopback Hub repository `repo_id`."""
    with state.lock:
        state.repos[repo_id] = {
            "files": {path.name: path.read_bytes() for path in directory.iterdir()},
            "sha": "1" * 40,
            "private": False,
        }


def _load_from_hub(url, tmp_path, repo_id, reference, **kwargs):
    """LOAD_FROM_HUB for `repo_id` against the reference model's logits."""
    inputs = _inputs_for(reference)
    with torch.no_grad():
        torch.save({"inputs": inputs, "logits": reference(**inputs).logits}, tmp_path / "expected.pt")
    return run_python(
        LOAD_FROM_HUB, hub_env(url, tmp_path / "home"), tmp_path, repo_id, tmp_path / "expected.pt", json.dumps(kwargs)
    )


def _downloaded(state, repo_id, name) -> bool:
    return any(
        method == "GET" and path.startswith(f"/{repo_id}/resolve/") and path.endswith(f"/{name}")
        for method, path in state.requests
    )


@pytest.mark.slow
def test_loads_from_a_hub_id(hub, tmp_path):
    state, url = hub
    reference = _reference(DebertaV2ForSequenceClassification, "v3")
    reference.save_pretrained(tmp_path / "v2")
    _publish(state, "user/deberta-v2-tiny", tmp_path / "v2")  # config and safetensors, as DebertaV2 publishes them
    loaded = _load_from_hub(url, tmp_path, "user/deberta-v2-tiny", reference)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    assert "loaded" in loaded.stdout
    assert _downloaded(state, "user/deberta-v2-tiny", "model.safetensors")


@pytest.mark.slow
def test_a_hub_repository_with_only_pickled_weights_loads_only_with_use_safetensors_false(hub, tmp_path):
    state, url = hub
    reference = _reference(DebertaV2ForSequenceClassification, "v3")
    save_pickled(reference, tmp_path / "v2")  # config.json and pytorch_model.bin, as older checkpoints ship them
    _publish(state, "user/deberta-v2-pickled", tmp_path / "v2")
    refused = _load_from_hub(url, tmp_path, "user/deberta-v2-pickled", reference)
    assert refused.returncode != 0
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("OSError: user/deberta-v2-pickled holds pickled weights (pytorch_model.bin)"), error
    assert "use_safetensors=False" in error
    assert not _downloaded(state, "user/deberta-v2-pickled", "pytorch_model.bin")  # refused before it is read
    loaded = _load_from_hub(url, tmp_path, "user/deberta-v2-pickled", reference, use_safetensors=False)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    assert "loaded" in loaded.stdout
    assert _downloaded(state, "user/deberta-v2-pickled", "pytorch_model.bin")


@pytest.mark.parametrize("source", ["deberta_lite", "debertav2"])
def test_pickled_weights_load_only_with_use_safetensors_false(source, tmp_path):
    if source == "deberta_lite":
        reference = DebertaLiteForSequenceClassification(tiny_config(num_labels=3)).eval()
    else:
        reference = _reference(DebertaV2ForSequenceClassification, "v3")
    save_pickled(reference, tmp_path)
    with pytest.raises(OSError, match=r"pickled weights \(pytorch_model\.bin\).*use_safetensors=False"):
        DebertaLiteForSequenceClassification.from_pretrained(tmp_path)
    lite, info = DebertaLiteForSequenceClassification.from_pretrained(
        tmp_path, use_safetensors=False, output_loading_info=True
    )
    assert_nothing_left_out(info)
    assert_same_outputs(lite, reference)
    # Safetensors beside a pickle: the safetensors are what loads, without any opt-in, to the very same weights.
    reference.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").exists()
    from_safetensors = DebertaLiteForSequenceClassification.from_pretrained(tmp_path)
    assert_close_by_name(from_safetensors.state_dict(), lite.state_dict(), atol=0, rtol=0)


def test_truncated_or_corrupted_weights_name_the_file(tmp_path):
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], data[:100], b"not a safetensors file" * 10, b""):
        weights.write_bytes(broken)
        with pytest.raises(OSError, match=rf"{weights} cannot be read .*truncated or corrupted"):
            DebertaLiteModel.from_pretrained(tmp_path)


def test_original_checkpoint_loads_into_the_masked_lm_with_its_position_table(tmp_path):
    reference, table = original_deberta_checkpoint(tmp_path)
    lite, info = DebertaLiteForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert lite.uses_emd
    assert_nothing_left_out(info)  # the table loaded; the RTD head, which no class has, skipped quietly
    assert torch.equal(lite.deberta.embeddings.position_embeddings.weight, table)
    assert_same_outputs(DebertaLiteForMaskedLM.from_pretrained(tmp_path, emd_num_layers=0), reference)


def test_original_checkpoint_loads_into_a_classifier_skipping_what_it_does_not_read(tmp_path):
    reference, _ = original_deberta_checkpoint(tmp_path)
    lite, info = DebertaLiteForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    # The new head is initialised. The MLM head is reported unused, as transformers reports it for DebertaV2; the
    # absolute table (v3 inputs do not read it) and the RTD head are skipped without being reported.
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"pooler", "classifier"}
    assert {key.split(".")[0] for key in info["unexpected_keys"]} == {"lm_head"}
    assert not info["mismatched_keys"]
    assert lite.deberta.embeddings.position_embeddings is None
    assert_same_outputs(lite.deberta, reference.deberta)


@pytest.mark.parametrize("lite_class", [DebertaLiteModel, DebertaLiteForMaskedLM])
def test_debertav2_without_relative_attention_is_refused(lite_class, tmp_path):
    DebertaV2ForMaskedLM(v2_config("v1", relative_attention=False)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="relative_attention"):
        lite_class.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "lite_class, v2_class, auto_class, load_kwargs",
    [
        (
            DebertaLiteForSequenceClassification,
            DebertaV2ForSequenceClassification,
            AutoModelForSequenceClassification,
            {},
        ),
        (DebertaLiteForMaskedLM, DebertaV2ForMaskedLM, AutoModelForMaskedLM, {"emd_num_layers": 0}),
    ],
    ids=["classifier", "masked_lm"],
)
def test_a_loaded_debertav2_checkpoint_saves_as_deberta_lite(lite_class, v2_class, auto_class, load_kwargs, tmp_path):
    reference = _reference(v2_class, "v2_xlarge")  # the convolution too; legacy MLM head names
    reference.save_pretrained(tmp_path / "v2")
    lite = lite_class.from_pretrained(tmp_path / "v2", **load_kwargs)
    assert_same_outputs(lite, reference)
    lite.save_pretrained(tmp_path / "lite")
    saved = load_file(tmp_path / "lite" / "model.safetensors")
    assert json.loads((tmp_path / "lite" / "config.json").read_text())["model_type"] == "deberta-lite"
    assert any(key.startswith("deberta.layers.1.attention.") for key in saved)
    assert "deberta.layers.0.conv.conv.weight" in saved
    foreign = ("encoder.", "LayerNorm", "attention.self.", "lm_predictions.", "cls.predictions.")
    assert not [key for key in saved if any(part in key for part in foreign)]
    reloaded, info = auto_class.from_pretrained(tmp_path / "lite", output_loading_info=True)
    assert type(reloaded) is lite_class
    assert_nothing_left_out(info)
    assert_same_outputs(reloaded, lite)
