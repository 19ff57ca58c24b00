"""Trainer with gradient accumulation must take the same step as one big batch (the loss scaling is ours to get
right)."""

import datasets
import torch
from transformers import Trainer, TrainingArguments

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification

from helpers import assert_close_by_name, tiny_config


def _one_sgd_step(model, dataset, output_dir, batch_size, accumulation):
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1e9,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _compare(make_model, dataset, tmp_path):
    torch.manual_seed(0)
    initial = make_model().state_dict()
    results = []
    for batch_size, accumulation in [(8, 1), (4, 2)]:
        model = make_model()
        model.load_state_dict(initial)
        results.append(_one_sgd_step(model, dataset, tmp_path / f"{batch_size}", batch_size, accumulation))
    big, accumulated = results
    moved = max((big[name] - initial[name]).abs().max().item() for name in big)
    assert moved > 1e-3  # the step did something
    assert_close_by_name(accumulated, big, atol=1e-5, rtol=1e-4)


def test_classifier_gradient_accumulation_matches_one_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": torch.randint(5, 100, (8, 10), generator=generator).tolist(),
            "labels": [0, 1, 1, 0, 1, 0, 0, 1],
        }
    )
    _compare(lambda: DebertaLiteForSequenceClassification(tiny_config(num_labels=2)), dataset, tmp_path)


def test_masked_lm_gradient_accumulation_matches_one_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (8, 10), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:4, 2] = input_ids[:4, 2]  # uneven: the first half has one masked token per row...
    labels[4:, 1:6] = input_ids[4:, 1:6]  # ...the second half five, so per-batch means would weigh them wrongly
    dataset = datasets.Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})
    _compare(lambda: DebertaLiteForMaskedLM(tiny_config()), dataset, tmp_path)
