"""Crash-safe training: checkpoint markers, and runs killed with SIGKILL and resumed."""

import json

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from deberta_lite import DebertaLiteForSequenceClassification
from deberta_lite.checkpoints import (
    COMPLETE_MARKER,
    CheckpointError,
    CrashSafeCheckpoints,
    last_complete_checkpoint,
    mark_complete,
    resolve_resume,
    verify_checkpoint,
)
from deberta_lite.trainer import DebertaLiteTrainer

from helpers import ROOT, accelerate_launch, load_script, padded_batch, resumable_run_args, run_and_kill, tiny_config


pretrain_mlm = load_script("pretrain_mlm")


def _checkpoint(directory, files=None):
    directory.mkdir(parents=True)
    for name, content in (files or {"model.safetensors": b"0123456789", "trainer_state.json": b"{}"}).items():
        (directory / name).write_bytes(content)
    return directory


def test_marker_vouches_for_every_file(tmp_path):
    checkpoint = _checkpoint(tmp_path / "checkpoint-2")
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(checkpoint)
    mark_complete(checkpoint)
    assert verify_checkpoint(checkpoint) == checkpoint
    assert json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]["model.safetensors"]["size"] == 10

    (checkpoint / "model.safetensors").write_bytes(b"01234")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        verify_checkpoint(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"0123456780")  # same size, one byte changed
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted"):
        verify_checkpoint(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        verify_checkpoint(checkpoint)


def test_latest_skips_incomplete_checkpoints(tmp_path):
    mark_complete(_checkpoint(tmp_path / "checkpoint-2"))
    mark_complete(_checkpoint(tmp_path / "checkpoint-10"))
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{ truncated")
    _checkpoint(tmp_path / "checkpoint-12")  # killed while saving: no marker
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert resolve_resume(tmp_path, "latest") == str(tmp_path / "checkpoint-2")
    assert resolve_resume(tmp_path, None) is None
    with pytest.raises(CheckpointError, match="checkpoint-12 is incomplete"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-12"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(tmp_path / "elsewhere", True)


@pytest.fixture(scope="module")
def uninterrupted(tokenizer_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    pretrain_mlm.main(resumable_run_args(tokenizer_dir, output_dir))
    return load_file(output_dir / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, skipped, resumed_from",
    [
        ({"KILL_SAVE": "2"}, "checkpoint-4", "checkpoint-2"),  # killed while saving checkpoint-4
        ({"KILL_STEP": "5"}, None, "checkpoint-4"),  # killed in the middle of step 5
    ],
)
def test_sigkilled_run_resumes_to_the_same_weights(tokenizer_dir, tmp_path, uninterrupted, kill, skipped, resumed_from):
    output_dir = tmp_path / "run"
    # --save_total_limit 1: Trainer alone would delete checkpoint-2 before checkpoint-4 is complete.
    args = resumable_run_args(tokenizer_dir, output_dir, "--save_total_limit", "1")
    killed = run_and_kill("pretrain_mlm", args, kill, tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (output_dir / "model.safetensors").exists()  # it really died before the end
    if skipped:
        assert (output_dir / skipped / "model.safetensors").exists()
        with pytest.raises(CheckpointError, match="incomplete"):
            verify_checkpoint(output_dir / skipped)
    assert last_complete_checkpoint(output_dir) == output_dir / resumed_from

    pretrain_mlm.main(args + ["--resume_from_checkpoint", "latest"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    resumed = load_file(output_dir / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0, msg=key)
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-6"]
    verify_checkpoint(output_dir / "checkpoint-6")
    # Training arguments are saved as JSON, never as a pickle.
    assert not list(output_dir.rglob("training_args.bin"))
    assert json.loads((output_dir / "training_args.json").read_text())["max_steps"] == 6


def _train_classifier(trainer_class, output_dir, args_out: list | None = None) -> list[str]:
    """6 steps, evaluated and saved every 2, keeping the best checkpoint with save_total_limit=1: the checkpoints left.

    The metric worsens at every evaluation, so the best checkpoint (checkpoint-2) is not the last one.
    """
    input_ids, attention_mask = padded_batch(batch=8, seed=5)
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": (input_ids[:, 1] % 2).tolist(),
        }
    )
    evaluations = []

    def worsening(_):
        evaluations.append(1)
        return {"score": -len(evaluations)}

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    if args_out is not None:
        args_out.append(args)
    torch.manual_seed(0)
    trainer = trainer_class(
        model=DebertaLiteForSequenceClassification(tiny_config(num_labels=2)),
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        compute_metrics=worsening,
    )
    trainer.train()
    trainer.save_model()
    return sorted(path.name for path in output_dir.glob("checkpoint-*"))


def test_rotation_after_the_marker_keeps_what_trainer_keeps(tmp_path):
    # Trainer's rules: the latest and the best checkpoint survive rotation; with a limit of 1, only the best survives
    # the end of training.
    assert _train_classifier(Trainer, tmp_path / "trainer") == ["checkpoint-2"]
    given = []
    assert _train_classifier(DebertaLiteTrainer, tmp_path / "ours", given) == ["checkpoint-2"]
    verify_checkpoint(tmp_path / "ours" / "checkpoint-2")
    # The caller's arguments are untouched, and the JSON records the limit they asked for.
    assert given[0].save_total_limit == 1
    for directory in (tmp_path / "ours", tmp_path / "ours" / "checkpoint-2"):
        assert not (directory / "training_args.bin").exists()
        assert json.loads((directory / "training_args.json").read_text())["save_total_limit"] == 1


def test_the_callback_refuses_what_it_cannot_make_safe_and_marks_trial_folders(tmp_path):
    callback, control = CrashSafeCheckpoints(save_total_limit=2), TrainerControl()
    with pytest.raises(ValueError, match="save_total_limit=2: it would delete older checkpoints before the new one"):
        callback.on_train_begin(
            TrainingArguments(str(tmp_path), save_total_limit=2, use_cpu=True), TrainerState(), control
        )
    args = TrainingArguments(str(tmp_path), use_cpu=True)
    with pytest.raises(ValueError, match="hyperparameter search .* needs hp_name"):
        callback.on_train_begin(args, TrainerState(is_hyper_param_search=True), control)
    # In a search, Trainer saves in output_dir/<trial name>/checkpoint-N.
    trial = TrainerState(is_hyper_param_search=True, trial_name="trial-a", global_step=3)
    callback.on_train_begin(args, trial, control)
    checkpoint = _checkpoint(tmp_path / "trial-a" / "checkpoint-3")
    callback.on_save(args, trial, control)
    verify_checkpoint(checkpoint)


# Runs pretrain_mlm.py in each process of an accelerate launch; process 1 writes its RNG state 2 s late, so a marker
# written without waiting for every process would not list that file.
SLOW_RANK_DRIVER = """
import os, sys, time
import torch
sys.path.insert(0, {scripts!r})
save = torch.save

def late_save(obj, f, *args, **kwargs):
    if str(f).endswith("rng_state_1.pth"):
        time.sleep(2)
    return save(obj, f, *args, **kwargs)

torch.save = late_save
import pretrain_mlm
pretrain_mlm.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_processes_mark_a_checkpoint_once_both_have_written_it(tokenizer_dir, tmp_path):
    output_dir = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_RANK_DRIVER.format(scripts=str(ROOT / "scripts")))
    accelerate_launch(
        "ddp.yaml",
        str(driver),
        [
            *resumable_run_args(tokenizer_dir, output_dir, "--save_total_limit", "1"),
        ],
        tmp_path,
        timeout=600,
    )
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-6"]
    recorded = json.loads((output_dir / "checkpoint-6" / COMPLETE_MARKER).read_text())["files"]
    assert {
        "rng_state_0.pth",
        "rng_state_1.pth",
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
        "training_args.json",
    } <= set(recorded)
    verify_checkpoint(output_dir / "checkpoint-6")
    assert not list(output_dir.rglob("training_args.bin"))
