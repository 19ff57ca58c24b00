"""Crash-safe training: checkpoint markers, runs killed with SIGKILL and resumed, unreadable and pickled weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from deberta_lite import DebertaLiteModel
from deberta_lite.checkpoints import (
    COMPLETE_MARKER,
    CheckpointError,
    last_complete_checkpoint,
    mark_complete,
    resolve_resume,
    verify_checkpoint,
)

from conftest import ROOT, load_script, tiny_config


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


# Runs pretrain_mlm.py and kills itself with SIGKILL: during the KILL_SAVE-th checkpoint save, after its files are
# written and before its marker is, or at the start of training step KILL_STEP.
DRIVER = """
import os, signal, sys
sys.path.insert(0, {scripts!r})
from deberta_lite import checkpoints, pretraining

kill_save, kill_step = int(os.environ.get("KILL_SAVE", 0)), int(os.environ.get("KILL_STEP", 0))
saves, steps = [], []
mark_complete, training_step = checkpoints.mark_complete, pretraining.MaskingTrainer.training_step

def mark_or_die(directory):
    saves.append(directory)
    if len(saves) == kill_save:
        os.kill(os.getpid(), signal.SIGKILL)
    return mark_complete(directory)

def step_or_die(self, *args, **kwargs):
    steps.append(1)
    if len(steps) == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, *args, **kwargs)

checkpoints.mark_complete, pretraining.MaskingTrainer.training_step = mark_or_die, step_or_die
import pretrain_mlm
pretrain_mlm.main(sys.argv[1:])
"""


def _run_args(tokenizer_dir, output_dir, *extra):
    return ["--tokenizer_name", str(tokenizer_dir), "--output_dir", str(output_dir), "--use_cpu", "--report_to",
            "none", "--per_device_train_batch_size", "8", "--max_train_samples", "64", "--seed", "7",
            "--disable_tqdm", "true", "--do_train", "--max_steps", "6", "--save_steps", "2", "--learning_rate", "1e-3",
            "--masking", "ngram", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tokenizer_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    pretrain_mlm.main(_run_args(tokenizer_dir, output_dir))
    return load_file(output_dir / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("kill, skipped, resumed_from", [
    ({"KILL_SAVE": "2"}, "checkpoint-4", "checkpoint-2"),  # killed while saving checkpoint-4
    ({"KILL_STEP": "5"}, None, "checkpoint-4"),  # killed in the middle of step 5
])
def test_sigkilled_run_resumes_to_the_same_weights(tokenizer_dir, tmp_path, uninterrupted, kill, skipped,
                                                   resumed_from):
    output_dir = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(scripts=str(ROOT / "scripts")))
    # --save_total_limit 1: Trainer alone would delete checkpoint-2 before checkpoint-4 is complete.
    args = _run_args(tokenizer_dir, output_dir, "--save_total_limit", "1")
    killed = subprocess.run([sys.executable, str(driver), *args], env={**os.environ, **kill}, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
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


def test_truncated_or_corrupted_weights_name_the_file(tmp_path):
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], data[:100], b"not a safetensors file" * 10, b""):
        weights.write_bytes(broken)
        with pytest.raises(OSError, match=rf"{weights} cannot be read .*truncated or corrupted"):
            DebertaLiteModel.from_pretrained(tmp_path)


def test_pickled_weights_need_an_explicit_opt_in(tmp_path):
    model = DebertaLiteModel(tiny_config())
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"pickled weights \(pytorch_model\.bin\).*use_safetensors=False"):
        DebertaLiteModel.from_pretrained(tmp_path)
    loaded = DebertaLiteModel.from_pretrained(tmp_path, use_safetensors=False)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], atol=0, rtol=0)
    # Safetensors beside a pickle: the safetensors are what loads, without any opt-in.
    save_file(state, tmp_path / "model.safetensors")
    DebertaLiteModel.from_pretrained(tmp_path)
