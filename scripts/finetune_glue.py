"""Fine-tune DeBERTa-lite on a GLUE task or on local files with the Trainer, in the style of run_glue.

    python scripts/finetune_glue.py --task_name mnli --model_name_or_path microsoft/deberta-v3-base \\
        --output_dir runs/mnli --do_train --do_eval --do_predict --bf16
    python scripts/finetune_glue.py --train_file train.tsv --validation_file dev.tsv --test_file test.tsv \\
        --model_name_or_path CHECKPOINT --output_dir runs/mine --do_train --do_eval --do_predict

`--model_name_or_path` takes a DeBERTa-lite checkpoint, a transformers DebertaV2 checkpoint (converted as it loads)
or a Hub id. Per-task defaults come from configs/glue/<task>.json (local files: local.json), placed before your
arguments so that anything you give wins. With no data arguments it fine-tunes the `make quickstart` checkpoint on
the bundled sentiment sample (data/sentiment_sample). Outputs: the best checkpoint (by the task's main metric),
eval_results.json, GLUE submission files for --do_predict, and a model card (README.md).
"""

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.finetuning import GLUE_TASKS, run_finetuning
from deberta_lite.hub import HubPushError, check_push_ready


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "glue"
SAMPLE = ROOT / "data" / "sentiment_sample"
logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=str(ROOT / "outputs" / "quickstart" / "mlm"),
        metadata={"help": "DeBERTa-lite or DebertaV2 checkpoint directory, or a Hub id."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer; default: the checkpoint's."})
    cls_dropout: float | None = field(default=None, metadata={"help": "Dropout before the classifier."})
    pooler_dropout: float | None = field(default=None, metadata={"help": "Dropout inside the ContextPooler."})
    allow_pickle: bool = field(
        default=False, metadata={"help": "Also read a checkpoint that has only a pytorch_model.bin (weights_only)."}
    )


@dataclass
class DataArguments:
    task_name: str | None = field(default=None, metadata={"help": "A GLUE task.", "choices": sorted(GLUE_TASKS)})
    train_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl; labels not needed."})
    text_columns: str | None = field(
        default=None,
        metadata={"help": "One or two text columns, comma-separated (default: sentence, or sentence1,sentence2)."},
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    max_predict_samples: int | None = field(default=None)
    preprocessing_num_workers: int | None = field(default=None)
    overwrite_cache: bool = field(default=False)
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement of the main metric."}
    )
    recipe: str | None = field(
        default=None, metadata={"help": "Defaults file (default: configs/glue/<task>.json); 'none' for no recipe."}
    )


def recipe_arguments(argv: list[str]) -> list[str]:
    """The recipe's values as command-line arguments, to be placed before the user's."""
    peek = argparse.ArgumentParser(add_help=False)
    for name in ("--task_name", "--recipe", "--train_file", "--validation_file", "--test_file"):
        peek.add_argument(name)
    known, _ = peek.parse_known_args(argv)
    if known.recipe == "none":
        return []
    if known.recipe:
        path = Path(known.recipe)
    elif known.task_name:
        path = RECIPES / f"{known.task_name}.json"
    elif known.train_file or known.validation_file or known.test_file:
        path = RECIPES / "local.json"
    else:
        path = RECIPES / "sentiment_sample.json"
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    arguments = []
    for name, value in json.loads(path.read_text()).items():
        arguments += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return arguments


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=recipe_arguments(argv) + argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_push_ready(training_args.push_to_hub, training_args.hub_token)  # before any work that could be lost
    set_seed(training_args.seed)

    if not (data_args.task_name or data_args.train_file or data_args.validation_file or data_args.test_file):
        logger.info("No data given: fine-tuning on the bundled sentiment sample %s", SAMPLE)
        data_args.train_file, data_args.validation_file = str(SAMPLE / "train.tsv"), str(SAMPLE / "validation.tsv")

    # The fields of both dataclasses are run_finetuning's parameters; the recipe was read by recipe_arguments.
    data = {name: value for name, value in asdict(data_args).items() if name != "recipe"}
    if data_args.text_columns:
        data["text_columns"] = tuple(column.strip() for column in data_args.text_columns.split(","))
    return run_finetuning(training_args, **asdict(model_args), **data)


if __name__ == "__main__":
    try:
        main()
    except HubPushError as error:
        sys.exit(f"error: {error}")
