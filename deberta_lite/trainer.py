"""The Trainer the scripts use: DeBERTa-lite's model card, pushes that say how to retry, crash-safe checkpoints."""

from transformers import Trainer

from .checkpoints import CrashSafeCheckpoints
from .hub import HubPushError, hyperparameters_of, retry_message, write_model_card


class DebertaLiteTrainer(CrashSafeCheckpoints, Trainer):
    """Trainer whose model card is DeBERTa-lite's, and whose pushes fail with a message that says how to retry.

    Its checkpoints are crash-safe (`deberta_lite.checkpoints`).

    Every push goes through `push_to_hub` (Trainer's save_model pushes too when --push_to_hub is set), always after
    the checkpoint is saved locally.
    """

    def push_to_hub(self, *args, **kwargs):
        try:
            return super().push_to_hub(*args, **kwargs)
        except Exception as error:  # HTTP errors, refused connections, timeouts
            raise HubPushError(retry_message(self.args.output_dir, self.hub_model_id, error)) from error

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None):
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
