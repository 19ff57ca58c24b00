"""Crash-safe Trainer checkpoints: a checkpoint counts as complete only once a marker, written last, says so.

Trainer writes `checkpoint-N/` file by file; a process killed while saving leaves a folder that looks like any
other, and `--resume_from_checkpoint` would load it. DeBERTa-lite's trainers finish every checkpoint by writing
`checkpoint_complete.json`: the size and SHA-256 of every file in it, written to a temporary name, synced and renamed
into place (an atomic rename), after the files themselves are synced. Resuming checks the marker first:
- `--resume_from_checkpoint latest` (or True) takes the newest *complete* checkpoint, and says which incomplete
  ones it skipped;
- an explicit path that is incomplete, truncated or altered is refused with an error that names the file.
Older checkpoints are rotated away (`--save_total_limit`) only after the new one is complete. `CrashSafeCheckpoints`,
a TrainerCallback, does the marking and the rotation; `deberta_lite.trainer.DebertaLiteTrainer` installs it and
resumes through `resolve_resume`.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, sort_checkpoints


logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(OSError):
    """A checkpoint is incomplete, truncated or altered; the message names the checkpoint and the file."""


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
        if sync:  # on disk before the marker that vouches for it
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _sync_directory(directory: Path):
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def mark_complete(checkpoint_dir: str | Path) -> Path:
    """Record every file of a finished checkpoint in its marker, atomically. Returns the marker's path."""
    checkpoint_dir = Path(checkpoint_dir)
    files = {
        path.relative_to(checkpoint_dir).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path, sync=True)}
        for path in sorted(checkpoint_dir.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER and not path.name.endswith(".tmp")
    }
    marker = checkpoint_dir / COMPLETE_MARKER
    temporary = marker.with_name(marker.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, marker)
    _sync_directory(checkpoint_dir)
    return marker


def verify_checkpoint(checkpoint_dir: str | Path) -> Path:
    """Raise CheckpointError unless every file the marker lists is present with its recorded size and hash."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint {checkpoint_dir} does not exist")
    marker = checkpoint_dir / COMPLETE_MARKER
    if not marker.exists():
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} is incomplete: it has no {COMPLETE_MARKER}, so its save was interrupted "
            "(or it was not written by DeBERTa-lite's trainers); resume from an earlier checkpoint"
        )
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{marker} is unreadable: {error}") from error
    for name, record in files.items():
        path = checkpoint_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from checkpoint {checkpoint_dir}")
        size = path.stat().st_size
        if size != record["size"]:
            raise CheckpointError(
                f"{path} is truncated or altered: {size} bytes, the checkpoint recorded {record['size']}"
            )
        if _sha256(path) != record["sha256"]:
            raise CheckpointError(f"{path} is corrupted: its SHA-256 differs from the one recorded when it was saved")
    return checkpoint_dir


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint-N in `output_dir` that verifies; incomplete ones are skipped with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (path for path in output_dir.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)),
        key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)),
        reverse=True,
    )
    for candidate in candidates:
        try:
            return verify_checkpoint(candidate)
        except CheckpointError as error:
            logger.warning("skipping %s", error)
    return None


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | bool | None) -> str | None:
    """What to pass to Trainer.train: None, or a verified checkpoint path.

    "latest"/True pick the newest complete checkpoint in `output_dir` and fail if there is none; a path is verified.
    """
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("latest", "true"):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise CheckpointError(f"no complete checkpoint to resume from in {output_dir}")
        logger.info("resuming from %s", found)
        return str(found)
    return str(verify_checkpoint(resume_from_checkpoint))


class CrashSafeCheckpoints(TrainerCallback):
    """Trainer callback: marks each checkpoint complete, and only then deletes older ones (`save_total_limit`).

    Trainer calls `on_save` once checkpoint-N is written (weights, optimizer, scheduler, RNG states and
    trainer_state.json) on every process. Trainer's own rotation runs inside that save, before `on_save`, so it would
    delete older checkpoints while the new one is still unmarked: the Trainer must run with `save_total_limit=None`
    and this callback holds the limit. `DebertaLiteTrainer` arranges both.
    """

    def __init__(self, save_total_limit: int | None = None):
        self.save_total_limit = save_total_limit

    def on_train_begin(self, args, state, control, **kwargs):
        if args.save_total_limit is not None:
            raise ValueError(
                f"the Trainer has save_total_limit={args.save_total_limit}: it would delete older checkpoints before "
                "the new one is marked complete; give the limit to CrashSafeCheckpoints(save_total_limit=...) and "
                "None to the Trainer"
            )
        if state.is_hyper_param_search and state.trial_name is None:
            raise ValueError(
                "a hyperparameter search with crash-safe checkpoints needs hp_name: without it the "
                "trial's checkpoint folder is named after a trial number the callbacks do not see"
            )

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every process has written its shards and RNG state
        if not args.should_save:
            return
        run_dir = _run_directory(args, state)
        mark_complete(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.save_total_limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=True,
        )

    def on_train_end(self, args, state, control, **kwargs):
        # Trainer's end-of-training rule for a limit of 1, which it skips without a limit: keep only the best.
        if not args.should_save or self.save_total_limit != 1 or state.best_model_checkpoint is None:
            return
        for checkpoint in sort_checkpoints(str(_run_directory(args, state))):
            if not os.path.samefile(checkpoint, state.best_model_checkpoint):
                shutil.rmtree(checkpoint, ignore_errors=True)


def _run_directory(args, state) -> Path:
    """Where Trainer puts the checkpoints: output_dir, or its subfolder named after the trial in a search."""
    return Path(args.output_dir, state.trial_name) if state.is_hyper_param_search else Path(args.output_dir)
