"""The masked LM head and its enhanced mask decoder (EMD): logits against an independent computation, labels and the
sparse opt-in, tied embeddings, fill-mask (pipeline and script) and Trainer's evaluation recipe.

What belongs here: DebertaLiteForMaskedLM's own behaviour. Loading DebertaV2 masked LM checkpoints is
tests/test_loading.py's, converting them tests/test_convert.py's.
"""

import shutil

import pytest
import torch
from torch.testing import assert_close
from transformers import DebertaV2Tokenizer, pipeline
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position as v2_relative_position

from deberta_lite import DebertaLiteForMaskedLM

from helpers import DATA, load_script, padded_batch, tiny_config, top_mask_predictions


def _labels(input_ids, attention_mask, positions):
    labels = torch.full_like(input_ids, -100)
    for row, column in positions:
        labels[row, column] = input_ids[row, column]
    assert (attention_mask[labels != -100] == 1).all()
    return labels


def independent_emd_logits(model, input_ids, attention_mask):
    """The EMD and MLM head rebuilt from the encoder's own modules, without the head's code path."""
    config = model.config
    encoder = model.deberta
    hidden = encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-2]
    seq_len = input_ids.shape[1]
    # Relative positions from transformers' own DebertaV2 function, shifted and clamped as DebertaV2 does.
    span = config.position_buckets
    relative = v2_relative_position(hidden, hidden, config.position_buckets, config.max_relative_positions)[0]
    relative = torch.clamp(relative + span, 0, 2 * span - 1)
    # The layers read the index as a lookup by distance i - j (it is Toeplitz): the first row reversed, then the
    # first column.
    relative = torch.cat([relative[0].flip(0), relative[1:, 0]])
    rel_embeddings = encoder.rel_norm(encoder.rel_embeddings.weight)
    keep = attention_mask.bool()
    pair_mask = keep[:, None, :, None] & keep[:, None, None, :]
    query = hidden + encoder.embeddings.position_embeddings.weight[:seq_len]
    for _ in range(config.emd_num_layers):
        query = encoder.layers[-1](
            hidden, pair_mask, relative, rel_embeddings, padding_mask=attention_mask, query_states=query
        )
    head = model.lm_head
    transformed = head.norm(torch.nn.functional.gelu(head.dense(query)))
    return transformed @ encoder.embeddings.word_embeddings.weight.T + head.decoder.bias


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_emd_matches_an_independent_computation(backend):
    model = DebertaLiteForMaskedLM(tiny_config())
    model.set_attn_implementation(backend)
    model.eval()
    input_ids, attention_mask = padded_batch()
    expected = independent_emd_logits(model, input_ids, attention_mask)
    logits = model(input_ids, attention_mask=attention_mask).logits
    assert logits.shape == (3, 12, 100)
    keep = attention_mask.bool()
    assert_close(logits[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_logits_with_labels_are_batch_by_sequence_by_vocab():
    model = DebertaLiteForMaskedLM(tiny_config()).eval()
    input_ids, attention_mask = padded_batch()
    labels = _labels(input_ids, attention_mask, [(0, 1), (1, 3), (1, 11), (2, 0), (2, 5)])
    with_labels = model(input_ids, attention_mask=attention_mask, labels=labels)
    without = model(input_ids, attention_mask=attention_mask).logits
    assert with_labels.logits.shape == (3, 12, 100)  # as every transformers masked LM
    assert_close(with_labels.logits, without)
    assert_close(with_labels.loss, torch.nn.functional.cross_entropy(without.view(-1, 100), labels.view(-1)))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "deberta_chunked"])
def test_sparse_prediction_decodes_only_masked_positions_with_the_same_loss_and_gradients(backend):
    """sparse_prediction: the enhanced mask decoder computes queries at the masked positions only (keys and values
    whole) and the vocabulary projection there only; logits, loss and every gradient equal the full decoder's."""
    model = DebertaLiteForMaskedLM(tiny_config()).train()  # dropout is 0 in the tiny config: deterministic
    model.set_attn_implementation(backend)
    input_ids, attention_mask = padded_batch()
    attention_mask[2] = attention_mask[2].flip(0)  # row 2 padded on the left
    labels = _labels(input_ids, attention_mask, [(0, 1), (1, 3), (1, 11), (2, 9), (2, 11)])
    queries = []
    hook = model.deberta.layers[-1].attention.query_proj.register_forward_hook(
        lambda module, args, output: queries.append(args[0].shape[1]) if args[0].dim() == 3 else None
    )
    results = {}
    for sparse in (False, True):
        model.zero_grad()
        queries.clear()
        out = model(input_ids, attention_mask=attention_mask, labels=labels, sparse_prediction=sparse)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results[sparse] = out, grads, list(queries)
    hook.remove()
    (full, full_grads, full_queries), (sparse, sparse_grads, sparse_queries) = results[False], results[True]
    assert full_queries == [12, 12, 12] and sparse_queries == [12, 2, 2]  # encoder layer, then 2 EMD passes
    assert sparse.logits.shape == (5, 100)
    assert_close(sparse.logits, full.logits[labels != -100], atol=1e-5, rtol=1e-5)
    assert_close(sparse.loss, full.loss, atol=1e-6, rtol=1e-6)
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        assert_close(
            sparse_grads[name], grad, atol=1e-5, rtol=1e-4, msg=lambda message, name=name: f"{name}: {message}"
        )


def test_sparse_prediction_with_rows_that_have_nothing_masked():
    model = DebertaLiteForMaskedLM(tiny_config()).eval()
    input_ids, attention_mask = padded_batch()
    labels = _labels(input_ids, attention_mask, [(1, 3)])
    sparse = model(input_ids, attention_mask=attention_mask, labels=labels, sparse_prediction=True)
    full = model(input_ids, attention_mask=attention_mask, labels=labels)
    assert_close(sparse.logits, full.logits[labels != -100], atol=1e-5, rtol=1e-5)
    nothing = model(
        input_ids, attention_mask=attention_mask, labels=torch.full_like(labels, -100), sparse_prediction=True
    )
    assert nothing.logits.shape == (0, 100) and float(nothing.loss) == 0.0


def test_emd_injects_absolute_positions_and_can_be_turned_off():
    input_ids, attention_mask = padded_batch()
    with_emd = DebertaLiteForMaskedLM(tiny_config()).eval()
    without = DebertaLiteForMaskedLM(tiny_config(emd_num_layers=0)).eval()
    # Without the EMD nothing reads the absolute table (position_biased_input=False), so the model has none.
    assert without.deberta.embeddings.position_embeddings is None
    loaded = without.load_state_dict(with_emd.state_dict(), strict=False)
    assert loaded.unexpected_keys == ["deberta.embeddings.position_embeddings.weight"] and not loaded.missing_keys
    plain = without(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    # EMD off: the head reads the last encoder layer directly.
    assert_close(plain.logits, without.lm_head(plain.hidden_states[-1]))
    emd = with_emd(input_ids, attention_mask=attention_mask).logits
    assert (emd - plain.logits).abs().max() > 1e-3
    # The EMD changes with the absolute table.
    with torch.no_grad():
        with_emd.deberta.embeddings.position_embeddings.weight.normal_()
    assert (with_emd(input_ids, attention_mask=attention_mask).logits - emd).abs().max() > 1e-3


def test_no_emd_when_the_input_already_has_absolute_positions():
    model = DebertaLiteForMaskedLM(tiny_config(position_biased_input=True)).eval()
    assert not model.uses_emd
    input_ids, attention_mask = padded_batch()
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert_close(out.logits, model.lm_head(out.hidden_states[-1]))


def test_masked_lm_beyond_max_position_embeddings_is_a_clear_error():
    model = DebertaLiteForMaskedLM(tiny_config()).eval()  # max_position_embeddings 64
    with pytest.raises(ValueError, match="enhanced mask decoder.*max_position_embeddings=64"):
        model(torch.randint(3, 100, (1, 65)))
    model.deberta(torch.randint(3, 100, (1, 65)))  # the bare encoder has no cap


def test_output_embeddings_are_tied_and_training_continues_after_resize():
    model = DebertaLiteForMaskedLM(tiny_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    input_ids, attention_mask = padded_batch()
    labels = _labels(input_ids, attention_mask, [(0, 1), (1, 2), (2, 3)])

    def step(ids, targets):
        optimizer.zero_grad()
        loss = model(ids, attention_mask=attention_mask, labels=targets).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    assert model.lm_head.decoder.weight is model.deberta.embeddings.word_embeddings.weight
    step(input_ids, labels)
    model.resize_token_embeddings(107)
    assert model.config.vocab_size == 107
    assert model.lm_head.decoder.weight is model.deberta.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.bias.shape == (107,)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    new_ids = input_ids.clone()
    new_ids[:, 2] = 105  # a new token in the input and as a target
    new_labels = labels.clone()
    new_labels[0, 1] = 106
    losses = [step(new_ids, new_labels) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert model.deberta.embeddings.word_embeddings.weight.grad[105].abs().sum() > 0


def test_fill_mask_pipeline_on_a_saved_checkpoint(tmp_path):
    shutil.copy(DATA / "spm" / "unigram_1000.model", tmp_path / "spm.model")
    tokenizer = DebertaV2Tokenizer.from_pretrained(tmp_path)
    model = DebertaLiteForMaskedLM(tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    fill = pipeline("fill-mask", model=str(tmp_path / "checkpoint"), top_k=3)
    text = f"The man went to the {tokenizer.mask_token}."
    predictions = fill(text)
    tokens, scores = top_mask_predictions(tmp_path / "checkpoint", text, top_k=3)
    assert [p["token"] for p in predictions] == tokens
    assert [p["score"] for p in predictions] == pytest.approx(scores, rel=1e-5)
    assert [p["token_str"] for p in predictions] == [tokenizer.decode([token]) for token in tokens]


def test_fill_mask_script(tmp_path, capsys):
    shutil.copy(DATA / "spm" / "unigram_1000.model", tmp_path / "spm.model")
    tokenizer = DebertaV2Tokenizer.from_pretrained(tmp_path)
    DebertaLiteForMaskedLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    predictions = load_script("fill_mask").main(
        [str(tmp_path / "checkpoint"), "The cat sat on the [MASK].", "--top_k", "4"]
    )
    tokens, scores = top_mask_predictions(tmp_path / "checkpoint", "The cat sat on the [MASK].", top_k=4)
    assert [p["token"] for p in predictions] == tokens
    assert [p["score"] for p in predictions] == pytest.approx(scores, rel=1e-5)
    assert "DebertaLiteForMaskedLM" in capsys.readouterr().out


def test_trainer_evaluation_with_the_run_mlm_accuracy_recipe(tmp_path):
    """transformers' run_mlm.py example evaluates with these two functions, which need (batch, seq, vocab) logits."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels = labels.reshape(-1)
        preds = preds.reshape(-1)
        mask = labels != -100
        labels = labels[mask]
        preds = preds[mask]
        return {"accuracy": float((preds == labels).mean())}  # evaluate's "accuracy", which needs the Hub

    model = DebertaLiteForMaskedLM(tiny_config()).eval()
    input_ids, attention_mask = padded_batch(batch=6)
    # Batches of two rows with 3, 5 and 2 masked tokens.
    labels = _labels(
        input_ids, attention_mask, [(0, 1), (1, 3), (1, 11), (2, 0), (2, 2), (2, 5), (3, 4), (3, 7), (4, 6), (5, 9)]
    )
    masked = labels != -100
    with torch.no_grad():
        predicted = model(input_ids, attention_mask=attention_mask).logits.argmax(-1)
    # Every other masked label is the model's own prediction, the others are not: accuracy 5/10.
    hit = torch.zeros_like(masked)
    hit[masked] = torch.arange(int(masked.sum())) % 2 == 0
    labels = torch.where(hit, predicted, torch.where(masked, (predicted + 1) % 100, labels))
    data = Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), "labels": labels.tolist()}
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, use_cpu=True, report_to="none"),
        eval_dataset=data,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()

    direct_accuracy = (predicted[masked] == labels[masked]).float().mean().item()
    assert direct_accuracy == 0.5
    assert metrics["eval_accuracy"] == direct_accuracy
    with torch.no_grad():
        batch_losses = [
            model(ids, attention_mask=mask, labels=targets).loss
            for ids, mask, targets in zip(input_ids.split(2), attention_mask.split(2), labels.split(2), strict=True)
        ]
        all_tokens_loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
    # Trainer averages the per-batch losses (each a mean over that batch's masked tokens), weighted by batch size,
    # which is not the mean over all masked tokens when batches hold different counts.
    assert metrics["eval_loss"] == pytest.approx(torch.stack(batch_losses).mean().item(), rel=1e-5)
    assert abs(metrics["eval_loss"] - all_tokens_loss.item()) > 1e-3


def test_masked_lm_loss_without_masked_tokens_is_zero_and_backpropagates():
    torch.manual_seed(0)
    model = DebertaLiteForMaskedLM(tiny_config())
    input_ids, attention_mask = padded_batch()
    loss = model(input_ids, attention_mask=attention_mask, labels=torch.full_like(input_ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)
