"""Parity with transformers' DebertaV2, the numerical reference: fp32, padded batches, both attention backends.

What belongs here: DeBERTa-lite's outputs against DebertaV2's for the same weights. The weights travel through the
converter, as a user's would; what the converter writes, keeps or refuses is tests/test_convert.py's, and loading a
DebertaV2 checkpoint directly with from_pretrained is tests/test_loading.py's.
"""

import pytest
import torch
from torch.testing import assert_close
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    DebertaV2ForSequenceClassification,
    DebertaV2Model,
)

from deberta_lite import DebertaLiteForSequenceClassification, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint

from helpers import CASES, padded_inputs, v2_config


def _convert(reference, tmp_path, name="lite"):
    source, target = tmp_path / "v2", tmp_path / name
    reference.save_pretrained(source)
    assert convert_checkpoint(source, target) == "deberta-v2->deberta-lite"
    return target


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_matches_debertav2(case, backend, tmp_path):
    reference = DebertaV2Model(v2_config(case)).eval()
    lite = AutoModel.from_pretrained(_convert(reference, tmp_path), attn_implementation=backend).eval()
    assert isinstance(lite, DebertaLiteModel)
    inputs = padded_inputs(reference.config)
    expected = reference(**inputs, output_hidden_states=True)
    actual = lite(**inputs, output_hidden_states=True)
    assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for ours, theirs in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["v3", "v1"])
def test_sequence_classification_logits_match_debertav2(case, tmp_path):
    reference = DebertaV2ForSequenceClassification(v2_config(case, num_labels=3)).eval()
    lite = AutoModelForSequenceClassification.from_pretrained(_convert(reference, tmp_path)).eval()
    assert isinstance(lite, DebertaLiteForSequenceClassification) and lite.config.num_labels == 3
    inputs = padded_inputs(reference.config)
    labels = torch.tensor([0, 2, 1])
    expected, actual = reference(**inputs, labels=labels), lite(**inputs, labels=labels)
    assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-5)
