"""Crash-safe Trainer checkpoints: a checkpoint counts as complete only once a marker, written last, says so.

Trainer writes `checkpoint-N/` file by file; a process killed while saving leaves a folder that looks like any
other, and `--resume_from_checkpoint` would load it. DeBERTa-lite's trainers finish every checkpoint by writing
`checkpoint_complete.json`: the size and SHA-256 of every file in it, written to a temporary name, synced and renamed
into place (an atomic rename), after the files themselves are synced. Resuming checks the marker first:
- `--resume_from_checkpoint latest` (or True) takes the newest *complete* checkpoint, and says which incomplete
  ones it skipped;
- an explicit path that is incomplete, truncated or altered is refused with an error that names the file.
Older checkpoints are rotated away (`--save_total_limit`) only after the new one is complete.
"""

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints


logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINING_ARGS_JSON = "training_args.json"
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
            raise CheckpointError(f"{path} is truncated or altered: {size} bytes, the checkpoint recorded "
                                  f"{record['size']}")
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


class CrashSafeCheckpoints:
    """Trainer mixin: marks each checkpoint complete, rotates only after that, resumes only from complete ones.

    It also writes the training arguments as `training_args.json` instead of Trainer's pickled
    `training_args.bin`, so a checkpoint or a trained model directory holds no pickle of them. (Optimizer,
    scheduler and RNG states stay Trainer's `torch.save` files, which Trainer reads back with `weights_only=True`.)
    """

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer would rotate before the new checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's shards and states are written
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            mark_complete(Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save:
            (output_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            (output_dir / TRAINING_ARGS_JSON).write_text(self.args.to_json_string())
