"""What transformers' own model tests expect of every model: saved weights reload as they were, Trainer resumes them,
every trainable parameter gets a gradient, checkpointing either way gives the same gradients, hidden-state selection,
and the attentions and hidden states of every head."""

import logging

import datasets
import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import Trainer, TrainingArguments

from deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForSequenceClassification,
    DebertaLiteModel,
)

from helpers import HEAD_CLASSES, head_config, head_inputs, loss_and_gradients, mlm_labels, padded_batch, tiny_config


TIED_DECODER = "lm_head.decoder.weight"


# ---------------------------------------------------------------- saved weights


def test_untied_decoder_is_saved_and_reloaded(tmp_path):
    model = DebertaLiteForMaskedLM(tiny_config(tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.decoder.weight.normal_()  # surely distinct from the word embeddings
    decoder = model.lm_head.decoder.weight.detach().clone()
    model.save_pretrained(tmp_path)
    assert TIED_DECODER in load_file(tmp_path / "model.safetensors")

    reloaded = DebertaLiteForMaskedLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.lm_head.decoder.weight, decoder)
    assert not torch.equal(reloaded.lm_head.decoder.weight, reloaded.deberta.embeddings.word_embeddings.weight)
    input_ids, attention_mask = padded_batch()
    assert torch.equal(
        reloaded(input_ids, attention_mask=attention_mask).logits,
        model(input_ids, attention_mask=attention_mask).logits,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_saved_weights_load_back_with_nothing_missing_but_the_tied_decoder(tie, tmp_path):
    """Trainer resumes with `model.load_state_dict(load_file(...), strict=False)`: only the tied decoder, stored once
    as the word embeddings, may be missing."""
    model = DebertaLiteForMaskedLM(tiny_config(tie_word_embeddings=tie))
    model.save_pretrained(tmp_path)
    result = model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert result.missing_keys == ([TIED_DECODER] if tie else []) and result.unexpected_keys == []
    reloaded = DebertaLiteForMaskedLM.from_pretrained(tmp_path)
    tied = reloaded.lm_head.decoder.weight is reloaded.deberta.embeddings.word_embeddings.weight
    assert tied == tie


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _train_masked_lm(tie: bool, output_dir, seed: int, resume_from_checkpoint=None):
    """The model after 3 AdamW steps of Trainer on a tiny MLM, which saves a checkpoint after step 2."""
    input_ids, attention_mask = padded_batch(batch=8, seed=3)
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": mlm_labels(input_ids, attention_mask).tolist(),
        }
    )
    torch.manual_seed(seed)
    model = DebertaLiteForMaskedLM(tiny_config(tie_word_embeddings=tie))
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=3,
        save_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=dataset).train(resume_from_checkpoint=resume_from_checkpoint)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def resumed_run(request, tmp_path_factory):
    """(3 uninterrupted steps, 2 steps + 1 resumed from the checkpoint by a differently initialised model, what
    Trainer warned while resuming)."""
    tie = request.param
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    uninterrupted = _train_masked_lm(tie, output_dir, seed=0)
    records = _Records()
    logger = logging.getLogger("transformers.trainer")
    logger.addHandler(records)
    try:
        resumed = _train_masked_lm(
            tie, tmp_path_factory.mktemp("resumed"), seed=1, resume_from_checkpoint=str(output_dir / "checkpoint-2")
        )
    finally:
        logger.removeHandler(records)
    return tie, uninterrupted, resumed, records.messages


def test_trainer_resume_gives_the_uninterrupted_weights(resumed_run):
    tie, uninterrupted, resumed, _ = resumed_run
    expected, actual = uninterrupted.state_dict(), resumed.state_dict()
    assert actual.keys() == expected.keys()
    for key in expected:
        assert_close(actual[key], expected[key], atol=1e-6, rtol=0, msg=key)
    assert (resumed.lm_head.decoder.weight is resumed.deberta.embeddings.word_embeddings.weight) == tie


def test_trainer_resume_warns_about_no_missing_key(resumed_run):
    # Trainer re-ties a tied decoder quietly only when the missing keys are the ones the model declares unsaved.
    _, _, _, warnings = resumed_run
    assert not [message for message in warnings if "missing keys" in message]


# ---------------------------------------------------------------- every parameter trains


HEADS = HEAD_CLASSES
# The v3 layout (no absolute input positions), plain and with the convolution, embed_proj and token types.
V3_LAYOUTS = {"v3": {}, "v3_conv_embed_proj": dict(conv_kernel_size=3, embedding_size=16, type_vocab_size=2)}


@pytest.mark.parametrize("layout", sorted(V3_LAYOUTS))
@pytest.mark.parametrize("model_class", HEADS, ids=lambda cls: cls.__name__)
def test_every_trainable_parameter_gets_a_gradient(model_class, layout):
    """DDP with find_unused_parameters=False fails at the second step on a parameter no loss reaches."""
    config = head_config(model_class, **V3_LAYOUTS[layout])
    model = model_class(config).train()
    out = model(**head_inputs(model_class, config))
    loss = out.last_hidden_state.pow(2).mean() if model_class is DebertaLiteModel else out.loss
    loss.backward()
    without_gradient = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_gradient == []
    if model_class is DebertaLiteForMaskedLM:  # the EMD reads the absolute table
        assert model.deberta.embeddings.position_embeddings.weight.grad.abs().sum() > 0


def test_masked_lm_without_the_emd_has_no_untrained_parameter():
    model = DebertaLiteForMaskedLM(tiny_config(emd_num_layers=0)).train()
    model(**head_inputs(DebertaLiteForMaskedLM, model.config)).loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("frozen_base", [False, True], ids=["full", "frozen_base"])
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize(
    "model_class", [DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification], ids=lambda cls: cls.__name__
)
def test_checkpointing_gives_the_plain_gradients(model_class, use_reentrant, frozen_base):
    """Trainer's --gradient_checkpointing with --gradient_checkpointing_kwargs '{"use_reentrant": true}', as PEFT and
    DeepSpeed recipes set it: reentrant checkpointing replays only positional tensors, and the EMD calls the last layer
    again with its own queries. `frozen_base` trains only the query and value projections and what follows the
    encoder, as LoRA does: the embeddings' output then needs the grad transformers' checkpointing enables on it.
    The first layer carries the v2 convolution, which checkpointing replays too."""
    config = head_config(model_class, conv_kernel_size=3)  # dropout 0: train mode is deterministic
    model = model_class(config).train()
    if frozen_base:
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith("deberta.") or "query_proj" in name or "value_proj" in name)
    inputs = head_inputs(model_class, config)
    plain_loss, plain_grads = loss_and_gradients(model, inputs)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in model.deberta.layers)
    checkpointed_loss, checkpointed_grads = loss_and_gradients(model, inputs)
    assert_close(checkpointed_loss, plain_loss, atol=1e-6, rtol=1e-6)
    assert checkpointed_grads.keys() == plain_grads.keys()
    assert {"deberta.layers.0.attention.query_proj.weight", "deberta.layers.1.attention.value_proj.weight"} <= set(
        plain_grads
    )
    for name in plain_grads:
        assert_close(checkpointed_grads[name], plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- hidden-state selection


@pytest.mark.parametrize("selection", [[0, 2], [-1], [-2, 0], 1, True], ids=str)
@pytest.mark.parametrize("emd_num_layers", [2, 0])
def test_masked_lm_returns_the_hidden_states_the_encoder_returns(selection, emd_num_layers):
    """The EMD reads the second-to-last hidden state whatever is selected; only the selection is returned."""
    model = DebertaLiteForMaskedLM(tiny_config(emd_num_layers=emd_num_layers)).eval()
    input_ids, attention_mask = padded_batch()
    expected = model.deberta(input_ids, attention_mask=attention_mask, output_hidden_states=selection).hidden_states
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=selection)
    assert len(expected) == model.config.num_hidden_layers + 1
    assert [state is None for state in out.hidden_states] == [state is None for state in expected]
    for actual, reference in zip(out.hidden_states, expected, strict=True):
        if reference is not None:
            assert torch.equal(actual, reference)
    # Without hidden states to capture the batch is unpadded: the same logits up to float rounding.
    assert_close(out.logits, model(input_ids, attention_mask=attention_mask).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- attentions and hidden states of every head


@pytest.mark.parametrize(
    "model_class", [cls for cls in HEADS if cls is not DebertaLiteModel], ids=lambda cls: cls.__name__
)
def test_every_head_returns_per_layer_attentions_and_hidden_states(model_class):
    """One (B, heads, N, N) attention map per layer and num_layers + 1 hidden states, the EMD's extra passes over the
    last layer included in neither (multiple choice: B x choices sequences)."""
    config = head_config(model_class)
    model = model_class(config).eval()
    model.set_attn_implementation("eager")
    inputs = head_inputs(model_class, config)
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    length = inputs["input_ids"].shape[-1]
    sequences = inputs["input_ids"].numel() // length
    assert len(out.attentions) == config.num_hidden_layers
    assert all(weights.shape == (sequences, config.num_attention_heads, length, length) for weights in out.attentions)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(state.shape == (sequences, length, config.hidden_size) for state in out.hidden_states)
    assert out.loss.dim() == 0
