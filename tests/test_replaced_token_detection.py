"""DeBERTa-v3's replaced-token-detection (RTD) discriminator: its head, its loss, and its original checkpoints."""

import json

import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from transformers import AutoModelForPreTraining, DebertaV2Model

from deberta_lite import DebertaLiteForReplacedTokenDetection, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint

from helpers import head_inputs, original_deberta_checkpoint, padded_batch, tiny_config


def _by_hand(head_weights: dict, hidden: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(h_i + h_[CLS]) -> dense -> gelu -> classifier, from the head's weights as they are stored."""
    states = torch.nn.functional.layer_norm(
        hidden + hidden[:, :1], hidden.shape[-1:], head_weights["norm.weight"], head_weights["norm.bias"], eps
    )
    states = torch.nn.functional.gelu(states @ head_weights["dense.weight"].T + head_weights["dense.bias"])
    return (states @ head_weights["classifier.weight"].T + head_weights["classifier.bias"]).squeeze(-1)


def test_logits_and_loss_by_hand():
    config = tiny_config()
    model = DebertaLiteForReplacedTokenDetection(config).eval()
    inputs = head_inputs(DebertaLiteForReplacedTokenDetection, config)
    out = model(**inputs)
    hidden = model.deberta(inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    head = {name: param.detach() for name, param in model.mask_predictions.named_parameters()}
    expected = _by_hand(head, hidden, config.layer_norm_eps)
    assert out.logits.shape == inputs["input_ids"].shape
    assert_close(out.logits, expected, atol=1e-6, rtol=1e-6)
    scored = inputs["labels"] != -100  # the padding is not scored
    loss = torch.nn.functional.binary_cross_entropy_with_logits(expected[scored], inputs["labels"][scored].float())
    assert_close(out.loss, loss, atol=1e-6, rtol=1e-6)


def test_every_token_ignored_gives_a_zero_loss_that_backpropagates():
    model = DebertaLiteForReplacedTokenDetection(tiny_config())
    input_ids, attention_mask = padded_batch()
    loss = model(input_ids, attention_mask=attention_mask, labels=torch.full_like(input_ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0 and model.mask_predictions.classifier.weight.grad is not None


def _original_discriminator(directory):
    """A Microsoft-style v3 discriminator: no architectures, the encoder and the RTD head, no MLM head."""
    original_deberta_checkpoint(directory)
    weights = load_file(directory / "model.safetensors")
    kept = {key: value for key, value in weights.items() if not key.startswith("lm_predictions.")}
    save_file(kept, directory / "model.safetensors", metadata={"format": "pt"})
    return kept


def test_an_original_discriminator_loads_with_its_head(tmp_path):
    weights = _original_discriminator(tmp_path / "v2")
    model, info = DebertaLiteForReplacedTokenDetection.from_pretrained(tmp_path / "v2", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, param in model.mask_predictions.named_parameters():
        assert torch.equal(param, weights["mask_predictions." + name.replace("norm.", "LayerNorm.")]), name
    # The encoder is the one a DeBERTa-v3 user fine-tunes: DebertaV2 reads the same file to the same states.
    reference = DebertaV2Model.from_pretrained(tmp_path / "v2").eval()
    input_ids, attention_mask = padded_batch()
    model.eval()
    hidden = reference(input_ids, attention_mask=attention_mask).last_hidden_state
    assert_close(
        model.deberta(input_ids, attention_mask=attention_mask).last_hidden_state, hidden, atol=1e-5, rtol=1e-5
    )


def test_conversion_both_ways_keeps_the_head(tmp_path):
    _original_discriminator(tmp_path / "v2")
    convert_checkpoint(tmp_path / "v2", tmp_path / "lite")
    assert json.loads((tmp_path / "lite" / "config.json").read_text())["architectures"] == [
        "DebertaLiteForReplacedTokenDetection"
    ]
    lite = AutoModelForPreTraining.from_pretrained(tmp_path / "lite").eval()
    assert isinstance(lite, DebertaLiteForReplacedTokenDetection)
    # Back to DebertaV2's layout: Microsoft's names, no architectures (transformers has no RTD class).
    convert_checkpoint(tmp_path / "lite", tmp_path / "back")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert {key for key in back if key.startswith("mask_predictions.")} == {
        f"mask_predictions.{name}"
        for name in (
            "dense.weight",
            "dense.bias",
            "LayerNorm.weight",
            "LayerNorm.bias",
            "classifier.weight",
            "classifier.bias",
        )
    }
    assert not json.loads((tmp_path / "back" / "config.json").read_text()).get("architectures")
    # transformers reads the encoder from it, to the discriminator's own encoder states.
    reference = DebertaV2Model.from_pretrained(tmp_path / "back").eval()
    input_ids, attention_mask = padded_batch()
    assert_close(
        reference(input_ids, attention_mask=attention_mask).last_hidden_state,
        lite.deberta(input_ids, attention_mask=attention_mask).last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
    )
    convert_checkpoint(tmp_path / "back", tmp_path / "again")
    before, after = (
        load_file(tmp_path / "lite" / "model.safetensors"),
        load_file(tmp_path / "again" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_the_discriminator_encoder_loads_into_every_head(tmp_path):
    model = DebertaLiteForReplacedTokenDetection(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    encoder, info = DebertaLiteModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]  # only the RTD head is left over
    assert {key.split(".")[0] for key in info["unexpected_keys"]} <= {"mask_predictions"}
    input_ids, attention_mask = padded_batch()
    assert torch.equal(
        encoder.eval()(input_ids, attention_mask=attention_mask).last_hidden_state,
        model.deberta(input_ids, attention_mask=attention_mask).last_hidden_state,
    )
