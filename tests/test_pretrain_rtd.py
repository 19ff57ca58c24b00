"""DeBERTa-v3 pretraining (scripts/pretrain_rtd.py): metrics, the two saved checkpoints, continuing, exact resume."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainingArguments,
    pipeline,
)

from deberta_lite import DebertaLiteForReplacedTokenDetection
from deberta_lite.checkpoints import COMPLETE_MARKER, last_complete_checkpoint
from deberta_lite.masking import DataCollatorForDebertaMLM
from deberta_lite.pretraining import (
    DataArguments,
    build_rtd_model,
    pretraining_data,
    rtd_counts,
    rtd_metrics,
    rtd_per_token,
    run_rtd_pretraining,
)

from helpers import (
    DATA,
    ROOT,
    accelerate_launch,
    assert_close_by_name,
    document_packing_run_args,
    load_script,
    pretraining_args,
    record_position_ids,
    resumable_run_args,
    run_and_kill,
)


pretrain_rtd = load_script("pretrain_rtd")
# The options test_pretraining's runs take (_args): seed, evaluation blocks, evaluation batch size.
SEED, EVAL_BLOCKS, EVAL_BATCH = 7, 48, 16


def test_metrics_by_hand():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, -100]])  # masked: (0,1) (0,2) (1,2)
    generator_logits = torch.zeros(3, 10)
    generator_logits[0, 5] = generator_logits[1, 4] = generator_logits[2, 7] = 2.0  # right, wrong, right
    rtd_labels = torch.tensor([[-100, 1, 0, 0], [-100, 0, 1, -100]])  # [CLS] and padding not scored
    discriminator_logits = torch.tensor([[9.0, 3.0, 1.0, -2.0], [9.0, -1.0, -4.0, 9.0]])  # flags (0,1) and (0,2)
    outputs = SimpleNamespace(
        generator_logits=generator_logits, discriminator_logits=discriminator_logits, rtd_labels=rtd_labels
    )
    per_token = rtd_per_token(outputs, labels)
    assert per_token["generator_predictions"].tolist() == [[-100, 5, 4, -100], [-100, -100, 7, -100]]
    assert per_token["discriminator_predictions"].tolist() == [[-100, 1, 1, 0], [-100, 0, 0, -100]]
    metrics = rtd_metrics(rtd_counts(per_token, labels))
    nll = torch.nn.functional.cross_entropy(generator_logits, torch.tensor([5, 6, 7]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([3.0, 1.0, -2.0, -1.0, -4.0]), torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    )
    # 5 scored tokens, 2 replaced; flagged 2, of which 1 replaced: precision 1/2, recall 1/2.
    assert metrics == {
        "mlm_loss": pytest.approx(nll.item()),
        "mlm_perplexity": pytest.approx(nll.exp().item()),
        "mlm_accuracy": pytest.approx(2 / 3),
        "rtd_loss": pytest.approx(bce.item()),
        "rtd_accuracy": pytest.approx(3 / 5),
        "rtd_f1": pytest.approx(1 / 2),
        "replaced_fraction": pytest.approx(2 / 5),
    }


@pytest.fixture(scope="module")
def rtd_run(tokenizer_dir, tmp_path_factory):
    """A short run from the bundled corpus: its output_dir and returned metrics."""
    output_dir = tmp_path_factory.mktemp("rtd") / "run"
    metrics = pretrain_rtd.main(
        pretraining_args(
            tokenizer_dir,
            output_dir,
            "--do_train",
            "--do_eval",
            "--eval_before_training",
            "--max_steps",
            "8",
            "--save_steps",
            "8",
            "--learning_rate",
            "2e-3",
            "--logging_steps",
            "4",
            "--max_train_samples",
            "64",
        )
    )
    return output_dir, metrics


def test_run_saves_a_discriminator_and_a_generator_that_load_everywhere(rtd_run):
    output_dir, _ = rtd_run
    discriminator_dir, generator_dir = output_dir / "discriminator", output_dir / "generator"
    for directory in (discriminator_dir, generator_dir):
        assert (directory / "model.safetensors").exists() and (directory / "README.md").exists()
        # The saved tokenizer truncates to what the models take (the generator's enhanced mask decoder: 128).
        assert AutoTokenizer.from_pretrained(directory).model_max_length == 128
    tokenizer = AutoTokenizer.from_pretrained(discriminator_dir)
    classifier = AutoModelForSequenceClassification.from_pretrained(discriminator_dir, num_labels=3)
    assert classifier(**tokenizer("The river flows through the city.", return_tensors="pt")).logits.shape == (1, 3)
    assert isinstance(AutoModelForPreTraining.from_pretrained(discriminator_dir), DebertaLiteForReplacedTokenDetection)
    fill_mask = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(generator_dir), tokenizer=tokenizer)
    assert len(fill_mask("The river flows through the [MASK].", top_k=3)) == 3

    # GDES folded: the saved discriminator's table is E_G + E_delta of the run's last checkpoint.
    joint = load_file(output_dir / "checkpoint-8" / "model.safetensors")
    e_g = joint["generator.deberta.embeddings.word_embeddings.weight"]
    e_delta = joint["discriminator.deberta.embeddings.word_embeddings.parametrizations.weight.original"]
    assert e_delta.abs().max() > 0  # the RTD loss trained E_delta
    saved = load_file(discriminator_dir / "model.safetensors")["deberta.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(saved, e_g + e_delta, atol=0, rtol=0)

    # Each card reports its own model's evaluation.
    assert set(json.loads((discriminator_dir / "eval_results.json").read_text())) == {
        "eval_rtd_loss",
        "eval_rtd_accuracy",
        "eval_rtd_f1",
        "eval_replaced_fraction",
    }
    assert "eval_mlm_accuracy" in json.loads((generator_dir / "eval_results.json").read_text())


def test_evaluation_metrics_recomputed_from_the_saved_checkpoints(rtd_run, tokenizer_dir, tmp_path):
    """Scoring the fixed evaluation masks with the two saved checkpoints, batch by batch with the run's seed as
    evaluation does, gives the reported metrics: the checkpoints are the trained models and the metrics are right."""
    output_dir, metrics = rtd_run
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data_args = DataArguments(
        train_file=str(DATA / "wiki_sample" / "train.txt"),
        validation_file=str(DATA / "wiki_sample" / "validation.txt"),
        max_eval_samples=EVAL_BLOCKS,
    )
    training_args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    _, eval_dataset, masker = pretraining_data(data_args, tokenizer, training_args, DATA / "wiki_sample")
    # "none": the discriminator reads its saved table as is, bit for bit the table GDES computed in the run.
    model = build_rtd_model(tokenizer, str(output_dir), embedding_sharing="none").eval()
    torch.manual_seed(SEED)
    correct = scored = replaced = masked = mlm_correct = 0
    with torch.no_grad():
        # A DataLoader, as the Trainer's: starting to iterate one draws a seed from torch's generator.
        for batch in DataLoader(eval_dataset, batch_size=EVAL_BATCH, collate_fn=masker.pad):
            outputs = model(**batch)
            is_masked = batch["labels"] != -100
            mlm_correct += (outputs.generator_logits.argmax(-1) == batch["labels"][is_masked]).sum().item()
            masked += is_masked.sum().item()
            is_scored = outputs.rtd_labels != -100
            flagged = (outputs.discriminator_logits > 0).long()
            correct += (flagged == outputs.rtd_labels)[is_scored].sum().item()
            scored += is_scored.sum().item()
            replaced += (outputs.rtd_labels == 1).sum().item()
            assert not ((outputs.rtd_labels == 1) & ~is_masked).any()  # only masked positions are replaced
    assert metrics["eval_rtd_accuracy"] == pytest.approx(correct / scored, abs=1e-9)
    assert metrics["eval_replaced_fraction"] == pytest.approx(replaced / scored, abs=1e-9)
    assert metrics["eval_mlm_accuracy"] == pytest.approx(mlm_correct / masked, abs=1e-9)
    assert 0 < replaced < masked
    # The generator learned from 8 steps; the loss reported is mlm_loss + 50 * rtd_loss.
    assert metrics["eval_mlm_loss"] < metrics["before_mlm_loss"]
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_mlm_loss"] + 50 * metrics["eval_rtd_loss"], rel=1e-4)


def test_continuing_from_a_run_restores_both_models(rtd_run, tokenizer_dir):
    output_dir, _ = rtd_run
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_rtd_model(tokenizer, str(output_dir))  # GDES: E_delta = saved table - E_G
    delta = model.discriminator.deberta.embeddings.word_embeddings.parametrizations.weight.original
    assert delta.abs().max() > 0
    discriminator = load_file(output_dir / "discriminator" / "model.safetensors")
    assert_close_by_name(model.discriminator_for_saving().state_dict(), discriminator, atol=1e-6, rtol=0)
    generator = load_file(output_dir / "generator" / "model.safetensors")
    assert_close_by_name(
        {name: value for name, value in model.generator.state_dict().items() if name in generator},
        generator,
        atol=0,
        rtol=0,
    )


def test_document_packing_reaches_generator_and_discriminator(tokenizer_dir, tmp_path, monkeypatch):
    calls = []
    builder = record_position_ids(pretrain_rtd.build_rtd_model, calls, "generator", "discriminator")
    monkeypatch.setattr(pretrain_rtd, "build_rtd_model", builder)
    pretrain_rtd.main(document_packing_run_args(tokenizer_dir, tmp_path / "run"))
    # Two training steps and one evaluation batch, each a generator's forward, then the discriminator's.
    assert [(name, training) for name, training, _, _ in calls] == [
        ("generator", True),
        ("discriminator", True),
        ("generator", True),
        ("discriminator", True),
        ("generator", False),
        ("discriminator", False),
    ]
    cls_id = AutoTokenizer.from_pretrained(tokenizer_dir).cls_token_id
    pairs = zip(calls[::2], calls[1::2], strict=True)
    for (_, _, input_ids, position_ids), (_, _, _, discriminator_position_ids) in pairs:
        # The generator's input is masked by the collator, which leaves every [CLS] (each document's start) as it
        # is; the discriminator's has the generator's samples, which may be any token, and the same positions.
        starts = input_ids == cls_id
        starts[:, 0] = True
        assert position_ids is not None and torch.equal(position_ids == 0, starts)
        assert torch.equal(discriminator_position_ids, position_ids)


@pytest.mark.parametrize("sharing", ["gdes", "shared"])
def test_tie_weights_after_a_move_to_the_meta_device_keeps_every_table_shared(tokenizer_dir, sharing):
    """accelerate's FSDP2 preparation (with fsdp_cpu_ram_efficient_loading, as configs/accelerate/fsdp.yaml sets it)
    takes the full state dict, moves the model to the meta device, which unties tied parameters, calls tie_weights,
    shards, and then needs every key of the sharded model's state dict in the full one."""
    model = build_rtd_model(
        AutoTokenizer.from_pretrained(tokenizer_dir),
        embedding_sharing=sharing,
        config_name=str(ROOT / "configs" / "tiny.json"),
    )
    keys = model.state_dict().keys()
    model.to("meta")
    model.tie_weights()
    assert model.state_dict().keys() == keys
    generator = model.generator
    assert generator.lm_head.decoder.weight is generator.deberta.embeddings.word_embeddings.weight


@pytest.fixture(scope="module")
def uninterrupted(tokenizer_dir, tmp_path_factory):
    """The output_dir of a run of resumable_run_args's 6 steps, logged at every step."""
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    pretrain_rtd.main(resumable_run_args(tokenizer_dir, output_dir, "--logging_steps", "1"))
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, incomplete, resumed_from",
    [
        ({"KILL_SAVE": "2"}, "checkpoint-4", "checkpoint-2"),  # killed while saving checkpoint-4
        ({"KILL_STEP": "5"}, None, "checkpoint-4"),  # killed in the middle of step 5
    ],
)
def test_sigkilled_run_resumes_to_the_uninterrupted_run(
    tokenizer_dir, tmp_path, uninterrupted, kill, incomplete, resumed_from
):
    output_dir = tmp_path / "run"
    args = resumable_run_args(tokenizer_dir, output_dir, "--logging_steps", "1", "--save_total_limit", "1")
    killed = run_and_kill("pretrain_rtd", args, kill, tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (output_dir / "discriminator").exists()  # it really died before the end
    if incomplete:  # its files written, its marker not
        assert (output_dir / incomplete / "model.safetensors").exists()
        assert not (output_dir / incomplete / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(output_dir) == output_dir / resumed_from

    pretrain_rtd.main(args + ["--resume_from_checkpoint", "latest"])
    # The steps up to the checkpoint are logged from it, the rest retrained: every step logs what it logged before.
    logs = {}
    for run in (uninterrupted, output_dir):
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        logs[run] = [e[key] for e in history if "loss" in e for key in ("loss", "rtd_accuracy", "mlm_accuracy")]
    assert len(logs[uninterrupted]) == 6 * 3
    assert logs[output_dir] == pytest.approx(logs[uninterrupted], abs=1e-6)
    for name in ("checkpoint-6", "discriminator", "generator"):
        expected = load_file(uninterrupted / name / "model.safetensors")
        assert_close_by_name(load_file(output_dir / name / "model.safetensors"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])  # on a CPU, both run under torch's CPU autocast
def test_mixed_precision_flags_train_with_finite_losses(tokenizer_dir, tmp_path, precision):
    metrics = pretrain_rtd.main(
        pretraining_args(
            tokenizer_dir,
            tmp_path / "run",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            precision,
            "--save_strategy",
            "no",
            "--max_train_samples",
            "16",
        )
    )
    assert all(math.isfinite(metrics[key]) for key in ("train_loss", "eval_loss", "eval_mlm_loss", "eval_rtd_loss"))


@pytest.mark.slow
def test_two_process_ddp_run(tokenizer_dir, tmp_path):
    output_dir = tmp_path / "run"
    accelerate_launch(
        "ddp.yaml",
        str(ROOT / "scripts" / "pretrain_rtd.py"),
        [
            *pretraining_args(
                tokenizer_dir, output_dir, "--do_train", "--do_eval", "--max_steps", "2", "--logging_steps", "1"
            ),
            "--per_device_train_batch_size",
            "4",
            "--max_train_samples",
            "32",
        ],
        tmp_path,
        timeout=300,
    )
    # 2 steps x 4 blocks x 2 processes = half of the 32 training blocks: both processes trained.
    assert json.loads((output_dir / "train_results.json").read_text())["epoch"] == pytest.approx(0.5)
    assert "eval_rtd_f1" in json.loads((output_dir / "eval_results.json").read_text())
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert all("rtd_accuracy" in entry for entry in history if "loss" in entry)
    generator = AutoModelForMaskedLM.from_pretrained(output_dir / "generator")
    discriminator = AutoModelForPreTraining.from_pretrained(output_dir / "discriminator")
    assert all(torch.isfinite(p).all() for p in [*generator.parameters(), *discriminator.parameters()])


def test_errors_before_training(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        pretrain_rtd.main(pretraining_args(tokenizer_dir, tmp_path / "out", "--max_seq_length", "256", "--do_train"))
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'tied' (choose from gdes, shared, none)"
        pretrain_rtd.main(pretraining_args(tokenizer_dir, tmp_path / "out", "--embedding_sharing", "tied"))
    pushing = SimpleNamespace(push_to_hub=True)
    masker = DataCollatorForDebertaMLM(AutoTokenizer.from_pretrained(tokenizer_dir))
    with pytest.raises(ValueError, match="push_to_hub.py"):
        run_rtd_pretraining(None, masker.tokenizer, pushing, None, None, masker)
