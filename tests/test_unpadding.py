"""Unpadded batches: a padded batch computed as one packed sequence of its real tokens (plus one stand-in per padded
row) gives every head the outputs and gradients of the padded computation, padded positions included.

What belongs here: when the model unpads and that it changes nothing. The kernels themselves are
tests/test_modeling.py's.
"""

import pytest
import torch
from torch.testing import assert_close

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForMultipleChoice, DebertaLiteModel, attention
from deberta_lite.attention import UNPAD_MIN_PADDING, UnpaddedBatch, build_relative_lookup, group_sequences

from helpers import HEAD_CLASSES, assert_close_by_name, gradients, head_config, head_inputs, tiny_config


def ragged_mask() -> torch.Tensor:
    """Right padding, a full row, left padding, a row of one token and an empty row."""
    mask = torch.zeros(5, 12, dtype=torch.long)
    mask[0, :4] = 1
    mask[1] = 1
    mask[2, 5:] = 1
    mask[3, :1] = 1
    return mask


def counting_unpadded_batches(monkeypatch) -> list:
    """Record the packed size of every batch the model unpads."""
    sizes, original = [], UnpaddedBatch.__init__

    def init(self, *args):
        original(self, *args)
        sizes.append(self.num_tokens)

    monkeypatch.setattr(UnpaddedBatch, "__init__", init)
    return sizes


@pytest.fixture(params=["groups", "one-group-per-length", "one-group"])
def grouping(request, monkeypatch) -> str:
    """Sequences of similar lengths attend as one padded group: the default groups (for ragged_mask, lengths 12, 7
    and 4 together, with padding, and 1 alone), only equal lengths together, or every sequence in one group."""
    if request.param != "groups":
        monkeypatch.setattr(attention, "GROUP_SLACK_TOKENS", 0)
        monkeypatch.setattr(attention, "GROUP_SLACK", 0.0 if request.param == "one-group-per-length" else 1.0)
    return request.param


def outputs_and_gradients(model, inputs: dict, unpad: bool) -> tuple[dict, dict]:
    model.config.unpad_batches = unpad
    model.zero_grad()
    out = {name: value for name, value in model(**inputs).items() if isinstance(value, torch.Tensor)}
    # A fixed random readout of every output, so that every position's value has a gradient to compare.
    generator = torch.Generator().manual_seed(0)
    sum((value * torch.randn(value.shape, generator=generator)).sum() for value in out.values()).backward()
    return {name: value.detach() for name, value in out.items()}, gradients(model)


def test_sequences_of_similar_lengths_attend_as_one_group():
    # Longest first; a sequence joins while it is at most 15% or 8 tokens shorter than the group's first.
    lengths = [4, 200, 1, 12, 175, 160, 7, 12]
    starts = [sum(lengths[:index]) for index in range(len(lengths))]
    sequences = list(zip(starts, lengths, strict=True))
    groups = [[size for _, size in group] for group in group_sequences(sequences)]
    assert groups == [[200, 175], [160], [12, 12, 7, 4], [1]]
    config = tiny_config()
    lookup = build_relative_lookup(12, 12, config, torch.device("cpu"))
    batch = UnpaddedBatch(ragged_mask(), None, lookup)
    assert [(group.count, group.length) for group in batch.groups] == [(3, 12), (1, 1)]
    assert batch.groups[0].mask is not None and batch.groups[1].mask is None  # padded to 12 / a group of one
    assert batch.groups[1].relative_lookup.tolist() == [0]  # distance 0 only: one row of the table
    assert batch.groups[1].rows == slice(int(lookup[11]), int(lookup[11]) + 1)


@pytest.mark.parametrize("model_class", HEAD_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("backend", ["eager", "sdpa", "deberta_chunked"])
def test_unpadded_equals_padded_for_every_head(model_class, backend, grouping, monkeypatch):
    config = head_config(model_class, emd_num_layers=0)  # the EMD reads hidden states: see the masked LM test
    model = model_class(config).train()  # dropout is 0 in the tiny config: deterministic
    inputs = head_inputs(model_class, config)
    mask = ragged_mask()[:3] if model_class is not DebertaLiteForMultipleChoice else ragged_mask()[[0, 2, 3, 1, 2, 0]]
    inputs["attention_mask"] = mask.view(inputs["input_ids"].shape)
    sizes = counting_unpadded_batches(monkeypatch)
    # The reference is the padded eager kernel, the specification: it also defines the gradients that reach padded
    # positions (their scores are replaced, so no gradient flows into their queries and keys).
    model.set_attn_implementation("eager")
    padded, padded_grads = outputs_and_gradients(model, inputs, unpad=False)
    assert sizes == []
    model.set_attn_implementation(backend)
    unpadded, unpadded_grads = outputs_and_gradients(model, inputs, unpad=True)
    assert len(sizes) == 1 and sizes[0] < mask.numel()
    assert_close_by_name(unpadded, padded, atol=1e-5, rtol=1e-5)
    assert len(padded_grads) > 10
    assert_close_by_name(unpadded_grads, padded_grads, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [2], [1]], ids=["ragged", "one-left-padded-row", "no-padding"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "deberta_chunked", "deberta_flex"])
def test_every_position_and_row_shape_matches_the_padded_computation(backend, rows, grouping):
    """Left and right padding, a one-token row, an empty row, a full row, batch size 1; padded positions included (a
    left-padded row's first position is padding, and the pooler reads it)."""
    model = DebertaLiteModel(tiny_config(position_biased_input=True)).eval()
    input_ids = torch.randint(3, 100, (5, 12), generator=torch.Generator().manual_seed(1))[rows]
    attention_mask = ragged_mask()[rows]
    states = {}
    for unpad in (False, True):
        model.set_attn_implementation(backend if unpad else "eager")
        model.config.unpad_batches = unpad
        with torch.no_grad():
            states[unpad] = model(input_ids, attention_mask=attention_mask).last_hidden_state
    assert_close(states[True], states[False], atol=1e-5, rtol=1e-5)


def test_long_rows_take_the_lean_kernel_inside_a_packed_batch():
    """A packed row of 1024 tokens or more runs the chunked kernel (with the far field), as a padded one does."""
    model = DebertaLiteModel(tiny_config(max_position_embeddings=2048)).eval()
    input_ids = torch.randint(3, 100, (2, 1100), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 40:] = 0
    states = {}
    for unpad in (False, True):
        model.config.unpad_batches = unpad
        with torch.no_grad():
            states[unpad] = model(input_ids, attention_mask=attention_mask).last_hidden_state
    assert_close(states[True], states[False], atol=1e-5, rtol=1e-5)


def test_automatic_unpadding_follows_the_padding_fraction(monkeypatch):
    model = DebertaLiteModel(tiny_config()).eval()  # unpad_batches=None: decided per batch
    assert model.config.unpad_batches is None
    sizes = counting_unpadded_batches(monkeypatch)
    input_ids = torch.randint(3, 100, (4, 20), generator=torch.Generator().manual_seed(3))
    few = torch.ones_like(input_ids)
    few[0, -1] = 0  # 1 of 80 positions is padding: below the threshold
    assert 1 / 80 < UNPAD_MIN_PADDING
    many = torch.ones_like(input_ids)
    many[:, 10:] = 0
    holes = torch.ones_like(input_ids)
    holes[:, 3:15] = 0  # padding inside rows cannot be packed: relative distances would change
    for mask in (None, torch.ones_like(input_ids), few, holes):
        model(input_ids, attention_mask=mask)
    assert sizes == []
    model(input_ids, attention_mask=many)
    assert sizes == [4 * 10 + 4]  # the real tokens and one stand-in per row
    model.config.unpad_batches = True
    model(input_ids, attention_mask=few)
    assert sizes[-1] == 79 + 1
    model.config.unpad_batches = False
    model(input_ids, attention_mask=many)
    assert len(sizes) == 2


def test_padded_layout_is_kept_where_it_is_read(monkeypatch):
    """Hidden states per layer, the v2 convolution and the enhanced mask decoder keep the padded computation."""
    sizes = counting_unpadded_batches(monkeypatch)
    input_ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(4))
    attention_mask = ragged_mask()[:3]
    model = DebertaLiteModel(tiny_config(unpad_batches=True)).eval()
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert all(state.shape == (3, 12, 32) for state in out.hidden_states)
    DebertaLiteModel(tiny_config(unpad_batches=True, conv_kernel_size=3))(input_ids, attention_mask=attention_mask)
    DebertaLiteForMaskedLM(tiny_config(unpad_batches=True))(input_ids, attention_mask=attention_mask)
    assert sizes == []
    model(input_ids, attention_mask=attention_mask)
    assert sizes == [(4 + 1) + 12 + (7 + 1)]  # real tokens, and a stand-in per padded row


# ---------------------------------------------------------------- packed documents


def packed_documents() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """Two rows of 12 tokens: documents of 5, 4 and 3 tokens; then 4 and 3 tokens and 5 of padding. position_ids
    restart at each document start, as transformers' DataCollatorWithFlattening writes them."""
    input_ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(5))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0
    documents = [[(0, 5), (5, 9), (9, 12)], [(0, 4), (4, 7)]]
    position_ids = torch.zeros_like(input_ids)
    for row, spans in enumerate(documents):
        for start, end in spans:
            position_ids[row, start:end] = torch.arange(end - start)
    return input_ids, attention_mask, position_ids, documents


@pytest.mark.parametrize("unpad", [False, True])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "deberta_chunked"])
@pytest.mark.parametrize("position_biased_input", [False, True])
def test_packed_documents_equal_each_document_alone(unpad, backend, position_biased_input):
    model = DebertaLiteModel(tiny_config(position_biased_input=position_biased_input, unpad_batches=unpad)).eval()
    model.set_attn_implementation(backend)
    input_ids, attention_mask, position_ids, documents = packed_documents()
    with torch.no_grad():
        packed = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        for row, spans in enumerate(documents):
            for start, end in spans:
                alone = model(input_ids[row : row + 1, start:end]).last_hidden_state[0]
                assert_close(packed[row, start:end], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparse_prediction", [False, True])
def test_packed_documents_restart_the_enhanced_mask_decoder_positions(sparse_prediction):
    model = DebertaLiteForMaskedLM(tiny_config()).eval()
    input_ids, attention_mask, position_ids, documents = packed_documents()
    labels = torch.full_like(input_ids, -100)
    labels[0, [1, 6, 10]] = input_ids[0, [1, 6, 10]]
    labels[1, [0, 5]] = input_ids[1, [0, 5]]
    with torch.no_grad():
        out = model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            sparse_prediction=sparse_prediction,
        )
        logits = out.logits if sparse_prediction else out.logits[labels != -100]
        expected = []
        for row, spans in enumerate(documents):
            for start, end in spans:
                alone = model(input_ids[row : row + 1, start:end]).logits[0]
                expected.append(alone[labels[row, start:end] != -100])
    assert_close(logits, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_packed_documents_unpadded_gradients_equal_the_masked_padded_ones(grouping):
    model = DebertaLiteModel(tiny_config()).train()
    input_ids, attention_mask, position_ids, _ = packed_documents()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    model.set_attn_implementation("eager")
    padded, padded_grads = outputs_and_gradients(model, inputs, unpad=False)
    unpadded, unpadded_grads = outputs_and_gradients(model, inputs, unpad=True)
    assert_close_by_name(unpadded, padded, atol=1e-5, rtol=1e-5)
    assert_close_by_name(unpadded_grads, padded_grads, atol=1e-5, rtol=1e-4)
