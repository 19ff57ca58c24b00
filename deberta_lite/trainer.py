"""The Trainer the scripts use: DeBERTa-lite's model card, pushes that say how to retry, crash-safe checkpoints.

Everything here goes through Trainer's public extension points: a callback (`CrashSafeCheckpoints`) and overrides
of the public methods `train`, `save_model`, `push_to_hub` and `create_model_card`.
"""

import copy
import json
from pathlib import Path

from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from .checkpoints import CrashSafeCheckpoints, resolve_resume
from .hub import HubPushError, hyperparameters_of, retry_message, write_model_card


TRAINING_ARGS_JSON = "training_args.json"


class DebertaLiteTrainer(Trainer):
    """Trainer whose model card is DeBERTa-lite's, and whose pushes fail with a message that says how to retry.

    Its checkpoints are crash-safe (`deberta_lite.checkpoints`): each is marked complete before older ones are
    deleted, and `train(resume_from_checkpoint=...)` resumes only from a complete one ("latest" finds it). The
    training arguments are saved as `training_args.json` instead of Trainer's pickled `training_args.bin`, so a
    checkpoint or a trained model directory holds no pickle of them. (Optimizer, scheduler and RNG states stay
    Trainer's `torch.save` files, which Trainer reads back with `weights_only=True`.)

    Every push goes through `push_to_hub` (Trainer's save_model pushes too when --push_to_hub is set), always after
    the checkpoint is saved locally.
    """

    def __init__(self, model=None, args: TrainingArguments | None = None, **kwargs):
        # Trainer deletes older checkpoints (save_total_limit) inside its save, before any callback hears of the new
        # one. The limit goes to CrashSafeCheckpoints, which applies it once the new checkpoint is marked complete;
        # Trainer gets a copy of the arguments without one, and the caller's arguments stay as they were.
        self.crash_safe_checkpoints = CrashSafeCheckpoints(args.save_total_limit if args is not None else None)
        if args is not None:
            args = copy.copy(args)
            args.save_total_limit = None
        super().__init__(model, args, **kwargs)
        self.add_callback(self.crash_safe_checkpoints)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        return super().train(resume, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Trainer's `save_model` (checkpoints and final saves alike), with the training arguments as JSON."""
        super().save_model(output_dir, _internal_call)
        pickled = Path(output_dir or self.args.output_dir, TRAINING_ARGS_NAME)
        if self.args.should_save and pickled.exists():
            # The arguments as given: with the checkpoint limit that CrashSafeCheckpoints applies.
            values = {**self.args.to_dict(), "save_total_limit": self.crash_safe_checkpoints.save_total_limit}
            pickled.with_name(TRAINING_ARGS_JSON).write_text(json.dumps(values, indent=2))
            pickled.unlink()

    def push_to_hub(self, *args, **kwargs):
        try:
            return super().push_to_hub(*args, **kwargs)
        except Exception as error:  # HTTP errors, refused connections, timeouts
            raise HubPushError(retry_message(self.args.output_dir, self.hub_model_id, error)) from error

    def create_model_card(
        self,
        language=None,
        license=None,
        tags=None,
        model_name=None,
        finetuned_from=None,
        tasks=None,
        dataset_tags=None,
        dataset=None,
        dataset_args=None,
    ):
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            repo_id=self.hub_model_id if self.args.push_to_hub else model_name,
            hyperparameters=hyperparameters_of(self.args),
            dataset=dataset if isinstance(dataset, str) else None,
            base_model=finetuned_from,
            license=license or "apache-2.0",
        )
