"""The library side of GLUE-style fine-tuning: tasks, data and labels, metrics, models, submission files, and
`run_finetuning`, a whole run.

`scripts/finetune_glue.py` parses its options and calls `run_finetuning`; `scripts/compare_finetuning.py` and the
tests call the parts directly. Metrics are computed with scikit-learn and scipy, offline.
"""

import csv
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
)

from .configuration_deberta_lite import DEBERTA_V2_MODEL_TYPE
from .data import read_table, row_location
from .modeling_deberta_lite import DebertaLiteForSequenceClassification
from .tokenization import fit_tokenizer_to_model
from .trainer import DebertaLiteTrainer


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What a sentence(-pair) task needs: text columns, labels, metrics and the files its predictions go to."""

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None: regression (one output, MSE)
    metric_names: tuple[str, ...]
    # GLUE's own spelling of each label id in submission files ("0"/"1" for CoLA, SST-2, MRPC, QQP, WNLI).
    submission_labels: tuple[str, ...] | None = None
    evaluation_splits: tuple[str, ...] = ("validation",)
    submission_files: dict[str, str] = field(default_factory=lambda: {"test": "test_predictions.tsv"})

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def main_metric(self) -> str:
        """The metric that picks the best checkpoint."""
        return "combined_score" if len(self.metric_names) > 1 else self.metric_names[0]


_BINARY = ("0", "1")
_NLI = ("entailment", "neutral", "contradiction")
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS = {
    "cola": TaskSpec(
        "cola",
        ("sentence",),
        ("unacceptable", "acceptable"),
        ("matthews_correlation",),
        _BINARY,
        submission_files={"test": "CoLA.tsv"},
    ),
    "sst2": TaskSpec(
        "sst2", ("sentence",), ("negative", "positive"), ("accuracy",), _BINARY, submission_files={"test": "SST-2.tsv"}
    ),
    "mrpc": TaskSpec(
        "mrpc",
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        ("accuracy", "f1"),
        _BINARY,
        submission_files={"test": "MRPC.tsv"},
    ),
    "qqp": TaskSpec(
        "qqp",
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        ("accuracy", "f1"),
        _BINARY,
        submission_files={"test": "QQP.tsv"},
    ),
    "stsb": TaskSpec(
        "stsb", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"), submission_files={"test": "STS-B.tsv"}
    ),
    "mnli": TaskSpec(
        "mnli",
        ("premise", "hypothesis"),
        _NLI,
        ("accuracy",),
        _NLI,
        evaluation_splits=("validation_matched", "validation_mismatched"),
        submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
    ),
    "qnli": TaskSpec(
        "qnli", ("question", "sentence"), _ENTAILMENT, ("accuracy",), _ENTAILMENT, submission_files={"test": "QNLI.tsv"}
    ),
    "rte": TaskSpec(
        "rte", ("sentence1", "sentence2"), _ENTAILMENT, ("accuracy",), _ENTAILMENT, submission_files={"test": "RTE.tsv"}
    ),
    "wnli": TaskSpec(
        "wnli",
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        ("accuracy",),
        _BINARY,
        submission_files={"test": "WNLI.tsv"},
    ),
    # The diagnostic set: test only, predicted with an MNLI model.
    "ax": TaskSpec(
        "ax",
        ("premise", "hypothesis"),
        _NLI,
        ("accuracy",),
        _NLI,
        evaluation_splits=(),
        submission_files={"test": "AX.tsv"},
    ),
}
GLUE_HUB_ID = "nyu-mll/glue"


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def task_metrics(metric_names: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The named metrics, plus combined_score (their mean) when there are several."""
    results = {}
    for name in metric_names:
        if name == "accuracy":
            results[name] = float(np.mean(predictions == labels))
        elif name == "f1":
            binary = len(np.union1d(np.unique(labels), [0, 1])) <= 2
            results[name] = float(f1_score(labels, predictions, average="binary" if binary else "macro"))
        elif name == "matthews_correlation":
            results[name] = float(matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            results[name] = float(pearsonr(predictions, labels)[0])
        elif name == "spearmanr":
            results[name] = float(spearmanr(predictions, labels)[0])
        else:
            raise ValueError(f"unknown metric {name!r}")
    if len(metric_names) > 1:
        results["combined_score"] = float(np.mean([results[name] for name in metric_names]))
    return results


def predictions_from_output(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) or regression values from a classifier's logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return np.squeeze(logits, axis=-1) if spec.is_regression else np.argmax(logits, axis=-1)


def metrics_function(spec: TaskSpec):
    """A `compute_metrics` for Trainer."""

    def compute(eval_prediction) -> dict[str, float]:
        predictions = predictions_from_output(spec, eval_prediction.predictions)
        return task_metrics(spec.metric_names, predictions, eval_prediction.label_ids)

    return compute


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _text_columns(spec_columns, requested, columns: list[str], path: str) -> tuple[str, ...]:
    if requested:
        chosen = tuple(requested)
    elif spec_columns:
        chosen = tuple(spec_columns)
    elif "sentence" in columns:
        chosen = ("sentence",)
    elif "sentence1" in columns and "sentence2" in columns:
        chosen = ("sentence1", "sentence2")
    else:
        raise ValueError(
            f"{path}: no text column found (looked for 'sentence', or 'sentence1' and 'sentence2'); columns: "
            f"{columns}. Name them with --text_columns"
        )
    if len(chosen) not in (1, 2):
        raise ValueError(f"--text_columns takes one or two columns, got {list(chosen)}")
    return chosen


def _empty_rows(table: datasets.Dataset, column: str) -> list[int]:
    """Indices of the rows whose `column` is missing (an empty csv field reads as None) or only whitespace."""
    if column not in table.column_names:
        return []
    values = table[column]
    return [i for i, value in enumerate(values) if value is None or (isinstance(value, str) and not value.strip())]


def load_local_task(
    train_file: str | None,
    validation_file: str | None,
    test_file: str | None = None,
    text_columns: tuple[str, ...] | None = None,
    label_column: str = "label",
    task: TaskSpec | None = None,
) -> tuple[datasets.DatasetDict, TaskSpec]:
    """Local csv/tsv/json/jsonl files -> a DatasetDict with `labels` (ids or floats) and the task they define.

    Labels are integers, strings (mapped to ids in sorted order, names kept), or floats with fractional values
    (regression). A missing file, an empty file, a missing text or label column, or a validation label that train
    never saw is an error that names the file and the column; a train or validation row with an empty text or label
    is an error that names the file, its line and the column. Test rows may leave them empty: test labels are
    dropped then, and empty texts are predicted as empty.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    tables = {split: read_table(path, split) for split, path in files.items() if path}
    if "train" not in tables and "validation" not in tables and "test" not in tables:
        raise ValueError("give at least one of --train_file, --validation_file, --test_file")
    first_split = next(iter(tables))
    columns = _text_columns(
        task.text_columns if task else None, text_columns, tables[first_split].column_names, files[first_split]
    )
    for split, table in tables.items():
        for column in columns:
            if column not in table.column_names:
                raise ValueError(f"{files[split]}: text column {column!r} missing; columns: {table.column_names}")
        if split != "test" and label_column not in table.column_names:
            raise ValueError(f"{files[split]}: label column {label_column!r} missing; columns: {table.column_names}")
        for column in columns + (label_column,):
            empty = _empty_rows(table, column)
            if not empty:
                continue
            if split != "test":
                count = f"{len(empty)} row" + ("s" if len(empty) > 1 else "")
                raise ValueError(
                    f"{row_location(files[split], empty[0])}: no value in column {column!r} ({count} of "
                    f"{len(table)} in the file); every {split} row needs its text and label"
                )
            if column == label_column:  # test labels are not used for predictions: incomplete ones are dropped
                logger.info(
                    "%s: %d of %d rows have no %r; the test labels are dropped",
                    files[split],
                    len(empty),
                    len(table),
                    label_column,
                )
                tables[split] = table.remove_columns(label_column)

    reference = tables.get("train") or tables.get("validation")
    label_names = task.label_names if task else None
    is_regression = task.is_regression if task else False
    if reference is not None and task is None:
        values = reference[label_column]
        if all(isinstance(value, float) for value in values) and not all(float(v).is_integer() for v in values):
            is_regression = True
        elif all(isinstance(value, str) for value in values):
            label_names = tuple(sorted(set(values)))
        else:
            label_names = tuple(str(value) for value in sorted(set(int(v) for v in values)))
    if not is_regression and label_names is None:
        raise ValueError("cannot tell the labels without a train or validation file; give --task_name")

    def encode(split: str, table: datasets.Dataset) -> datasets.Dataset:
        if label_column not in table.column_names:
            return table
        if is_regression:
            return table.map(lambda row: {"labels": float(row[label_column])}, desc=f"Labels of {split}")
        ids = {name: i for i, name in enumerate(label_names)}
        if task is not None:  # a GLUE task's files may hold label ids rather than names
            ids.update({str(i): i for i in range(len(label_names))})
        unseen = sorted({str(v) for v in table[label_column]} - set(ids))
        if unseen:
            raise ValueError(
                f"{files[split]}: column {label_column!r} has labels the training labels do not include: {unseen}; "
                f"known labels: {list(label_names)}"
            )
        return table.map(lambda row: {"labels": ids[str(row[label_column])]}, desc=f"Labels of {split}")

    encoded = datasets.DatasetDict({split: encode(split, table) for split, table in tables.items()})
    if task is None:
        # F1 is binary for two labels, macro-averaged otherwise.
        metric_names = ("pearson", "spearmanr") if is_regression else ("accuracy", "f1")
        task = TaskSpec("local", columns, None if is_regression else label_names, metric_names)
    else:
        task = replace(task, text_columns=columns)
    return encoded, task


def load_glue_task(task_name: str, cache_dir: str | None = None) -> tuple[datasets.DatasetDict, TaskSpec]:
    """A GLUE task from the Hub (nyu-mll/glue), labels as ids; needs the network."""
    spec = GLUE_TASKS[task_name]
    raw = datasets.load_dataset(GLUE_HUB_ID, task_name, cache_dir=cache_dir)
    return raw.rename_column("label", "labels"), spec


def first_rows(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    """The first `count` rows, or all of them when `count` is None (the --max_*_samples options)."""
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def tokenize_task(
    data: datasets.DatasetDict,
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> datasets.DatasetDict:
    """Tokenise the text column(s), truncating to max_seq_length; keep labels and GLUE's idx."""

    def tokenize(batch):
        texts = [batch[column] for column in spec.text_columns]
        texts = [[text if text is not None else "" for text in column] for column in texts]
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    tokenized = datasets.DatasetDict()
    for split, table in data.items():
        keep = {"labels", "idx"}
        tokenized[split] = table.map(
            tokenize,
            batched=True,
            num_proc=num_proc,
            remove_columns=[c for c in table.column_names if c not in keep],
            load_from_cache_file=load_from_cache_file,
            desc=f"Tokenizing {split}",
        )
    return tokenized


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def head_settings(spec: TaskSpec, cls_dropout: float | None = None, pooler_dropout: float | None = None) -> dict:
    """Config values of a classification head for `spec`: labels, problem type, and dropouts when given."""
    settings = {}
    if cls_dropout is not None:
        settings["cls_dropout"] = cls_dropout
    if pooler_dropout is not None:
        settings["pooler_dropout"] = pooler_dropout
    if spec.is_regression:
        settings.update(num_labels=1, problem_type="regression", id2label={0: "score"}, label2id={"score": 0})
    else:
        settings.update(
            num_labels=len(spec.label_names),
            problem_type="single_label_classification",
            id2label=dict(enumerate(spec.label_names)),
            label2id={name: i for i, name in enumerate(spec.label_names)},
        )
    return settings


def load_classifier(
    checkpoint: str,
    spec: TaskSpec,
    cls_dropout: float | None = None,
    pooler_dropout: float | None = None,
    allow_pickle: bool = False,
):
    """A sequence classifier for `spec` from a checkpoint; a new head when the checkpoint has none (or another).

    A transformers DebertaV2 checkpoint (a directory or a Hub id) loads as DeBERTa-lite, converted as it loads.
    Weights are read from safetensors; `allow_pickle` also reads a checkpoint that has only pickled weights
    (`pytorch_model.bin`, with `torch.load(weights_only=True)`).
    """
    # The Auto classes would pick transformers' own DebertaV2 for a DebertaV2 config.
    is_deberta_v2 = AutoConfig.from_pretrained(checkpoint).model_type == DEBERTA_V2_MODEL_TYPE
    model_class = DebertaLiteForSequenceClassification if is_deberta_v2 else AutoModelForSequenceClassification
    # use_safetensors=None: safetensors when the checkpoint has them, else the pickle.
    pickle = {"use_safetensors": None} if allow_pickle else {}
    return model_class.from_pretrained(
        checkpoint, ignore_mismatched_sizes=True, **pickle, **head_settings(spec, cls_dropout, pooler_dropout)
    )


def build_trainer(model, tokenizer, spec: TaskSpec, training_args, train_set, eval_set, callbacks=()):
    """A Trainer for sentence(-pair) classification or regression: dynamic padding and the task's metrics.

    The tokenizer, saved with the model, is first capped at the model's max_position_embeddings.
    """
    fit_tokenizer_to_model(tokenizer, model.config)
    return DebertaLiteTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.bf16 else None),
        compute_metrics=metrics_function(spec),
        callbacks=list(callbacks),
    )


# ---------------------------------------------------------------------------------------------------------------
# Submission files
# ---------------------------------------------------------------------------------------------------------------


def write_predictions(path: str | Path, spec: TaskSpec, indices, predictions: np.ndarray) -> Path:
    """`index<TAB>prediction` with a header: GLUE's label spelling for classification, floats for regression."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = spec.submission_labels or spec.label_names
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "prediction"])
        for index, prediction in zip(indices, predictions, strict=True):
            writer.writerow([int(index), f"{float(prediction):.6g}" if spec.is_regression else labels[int(prediction)]])
    return path


def write_submission_files(trainer, spec: TaskSpec, test_sets: dict[str, datasets.Dataset], output_dir) -> None:
    """Predict each test split (GLUE's idx kept as the index) into its submission file in `output_dir`."""
    for split, test_set in test_sets.items():
        indices = test_set["idx"] if "idx" in test_set.column_names else range(len(test_set))
        test_set = test_set.remove_columns([c for c in ("labels", "idx") if c in test_set.column_names])
        predictions = predictions_from_output(spec, trainer.predict(test_set, metric_key_prefix="predict").predictions)
        if trainer.is_world_process_zero():
            path = write_predictions(Path(output_dir) / spec.submission_files[split], spec, indices, predictions)
            logger.info("wrote %d predictions to %s", len(predictions), path)


# ---------------------------------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------------------------------


def run_finetuning(
    training_args,
    model_name_or_path: str,
    *,
    task_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_columns: tuple[str, ...] | None = None,
    label_column: str = "label",
    tokenizer_name: str | None = None,
    cls_dropout: float | None = None,
    pooler_dropout: float | None = None,
    allow_pickle: bool = False,
    max_seq_length: int = 128,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_predict_samples: int | None = None,
    preprocessing_num_workers: int | None = None,
    overwrite_cache: bool = False,
    early_stopping_patience: int | None = None,
) -> dict:
    """Fine-tune (`do_train`), evaluate (`do_eval`) and write submission files (`do_predict`); returns the train_*
    and eval_* metrics. The parameters are scripts/finetune_glue.py's options.

    The data: a GLUE task from the Hub, or local files; the model: `model_name_or_path` with a classification head
    for the task (`load_classifier`). Written to output_dir: the trained model (the best checkpoint with
    load_best_model_at_end) and its tokenizer, train_results.json, eval_results.json (MNLI: matched as eval_*,
    mismatched as eval_mismatched_*), the task's submission files, and a model card (pushed with push_to_hub).
    """
    files = (train_file, validation_file, test_file)
    if task_name and not any(files):
        data, spec = load_glue_task(task_name)
    else:  # local files, read with the GLUE task's labels and metrics when task_name names one
        data, spec = load_local_task(
            *files, text_columns=text_columns, label_column=label_column, task=GLUE_TASKS.get(task_name)
        )
    if training_args.do_train and "train" not in data:
        raise ValueError("--do_train needs training data (--train_file or a GLUE task with a train split)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name_or_path)
    model = load_classifier(model_name_or_path, spec, cls_dropout, pooler_dropout, allow_pickle)
    with training_args.main_process_first(desc="tokenising"):
        tokenized = tokenize_task(data, spec, tokenizer, max_seq_length, preprocessing_num_workers, not overwrite_cache)

    eval_sets = {
        split: first_rows(tokenized[split], max_eval_samples) for split in spec.evaluation_splits if split in tokenized
    }
    train_set = first_rows(tokenized["train"], max_train_samples) if training_args.do_train else None
    if training_args.load_best_model_at_end and training_args.metric_for_best_model in (None, "loss") and eval_sets:
        logger.warning(
            "selecting the best checkpoint by eval loss; the task's main metric is %s "
            "(--metric_for_best_model %s --greater_is_better true)",
            spec.main_metric,
            spec.main_metric,
        )
    if not eval_sets:
        training_args.load_best_model_at_end = False
    callbacks = []
    if early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    # Checkpoints are chosen on the first evaluation split (MNLI: matched).
    trainer = build_trainer(
        model, tokenizer, spec, training_args, train_set, next(iter(eval_sets.values()), None), callbacks
    )

    metrics = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        metrics.update(result.metrics)
    if training_args.do_eval:
        evaluation = {}
        for i, (split, eval_set) in enumerate(eval_sets.items()):
            prefix = "eval" if i == 0 else f"eval_{split.removeprefix('validation_')}"
            evaluation.update(trainer.evaluate(eval_set, metric_key_prefix=prefix))
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    if training_args.do_predict:
        test_sets = {
            split: first_rows(tokenized[split], max_predict_samples)
            for split in spec.submission_files
            if split in tokenized
        }
        write_submission_files(trainer, spec, test_sets, training_args.output_dir)
    card = {"finetuned_from": model_name_or_path, "dataset": GLUE_HUB_ID if task_name else None}
    if training_args.push_to_hub:  # the final card, with the evaluation results
        trainer.push_to_hub(**card)
    elif trainer.is_world_process_zero() and training_args.do_train:  # a card for the model this run saved
        trainer.create_model_card(model_name=Path(training_args.output_dir).name, **card)
    return metrics
