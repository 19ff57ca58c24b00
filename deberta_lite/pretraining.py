"""The library side of pretraining: the scripts' options, data, blocks, the models, evaluation masks, metrics and
the Trainers, for masked LM (`run_pretraining`) and DeBERTa-v3's replaced token detection (`run_rtd_pretraining`).

`scripts/pretrain_mlm.py` and `scripts/pretrain_rtd.py` are thin Trainer scripts over these functions;
`scripts/compare_pretraining.py` and the tests call them directly.
"""

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch.nn.utils import parametrize
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from .configuration_deberta_lite import DebertaLiteConfig
from .data import read_table
from .hub import check_push_ready, hyperparameters_of, write_model_card
from .masking import MASKING_STRATEGIES, DataCollatorForDebertaMLM
from .modeling_deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForReplacedTokenDetection
from .rtd import DISCRIMINATOR_DIR, GENERATOR_DIR, SHARED_TABLES, ReplacedTokenDetectionModel, generator_config
from .tokenization import fit_tokenizer_to_model
from .trainer import DebertaLiteTrainer


logger = logging.getLogger(__name__)

# How tokenised text becomes blocks: `concatenate` runs documents into one another; `documents` marks each
# document's tokens with position_ids that restart at 0, which confines attention to the document.
PACKING = ("concatenate", "documents")


@dataclass
class ModelArguments:
    """The pretraining scripts' model and tokenizer options (HfArgumentParser)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A checkpoint to continue pretraining."})
    config_name: str | None = field(
        default=None, metadata={"help": "Model config JSON for a new model (default: configs/tiny.json)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Override config fields of a new model: 'hidden_size=128,num_hidden_layers=4'."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer directory (scripts/train_tokenizer.py); default: the checkpoint's."}
    )


@dataclass
class DataArguments:
    """The pretraining scripts' data, masking and evaluation options (HfArgumentParser)."""

    dataset_name: str | None = field(default=None, metadata={"help": "A datasets name (the Hub, when online)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={"help": "txt, json, jsonl, csv or parquet."})
    validation_file: str | None = field(default=None, metadata={"help": "Same type as train_file."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per block, [CLS] and [SEP] included."})
    packing: str = field(
        default="concatenate",
        metadata={
            "help": "concatenate: blocks run documents into one another; documents: each document of a block on its "
            "own ([CLS] ... [SEP], position_ids restarting at 0, no attention between documents).",
            "choices": list(PACKING),
        },
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the cached tokenised datasets."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens to predict."})
    masking: str = field(
        default="token", metadata={"help": "token, whole_word or ngram.", "choices": list(MASKING_STRATEGIES)}
    )
    max_ngram: int = field(default=3, metadata={"help": "Longest n-gram (in words) for --masking ngram."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation blocks."})
    eval_mask_seed: int = field(default=1234, metadata={"help": "Seed of the fixed evaluation masks."})
    eval_before_training: bool = field(default=False, metadata={"help": "Also evaluate the model before training."})


def parse_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """The scripts' options into `dataclass_types` (HfArgumentParser): from `argv`, or from one JSON file of them."""
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def start_run(training_args: TrainingArguments) -> None:
    """What every pretraining run does first: logging, the push check (before any work that could be lost), seed."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_push_ready(training_args.push_to_hub, training_args.hub_token)
    set_seed(training_args.seed)


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """`--tokenizer_name`, else the tokenizer saved with `--model_name_or_path`."""
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if not source:
        raise ValueError("give --tokenizer_name (a directory from scripts/train_tokenizer.py) or --model_name_or_path")
    return AutoTokenizer.from_pretrained(source)


def check_max_seq_length(masked_lm: DebertaLiteForMaskedLM, max_seq_length: int) -> None:
    """Refuse, before any work, blocks longer than the enhanced mask decoder's absolute positions reach."""
    if masked_lm.uses_emd and max_seq_length > masked_lm.config.max_position_embeddings:
        raise ValueError(
            f"--max_seq_length {max_seq_length} exceeds max_position_embeddings="
            f"{masked_lm.config.max_position_embeddings}, which caps masked LM with the enhanced mask decoder"
        )


def pretraining_data(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    training_args: TrainingArguments,
    default_corpus: str | Path,
) -> tuple[datasets.Dataset, datasets.Dataset, DataCollatorForDebertaMLM]:
    """The training blocks, the validation blocks masked once (`mask_once`), and the masker for training batches.

    With neither `dataset_name` nor `train_file`, the text is `default_corpus`/train.txt and validation.txt.
    """
    if not (data_args.dataset_name or data_args.train_file):
        logger.info("No data given: using the bundled sample %s", default_corpus)
        data_args.train_file = str(Path(default_corpus, "train.txt"))
        data_args.validation_file = str(Path(default_corpus, "validation.txt"))
    with training_args.main_process_first(desc="loading and tokenising the data"):
        raw = load_raw_datasets(
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_args.train_file,
            data_args.validation_file,
            data_args.validation_split_percentage,
            data_args.text_column_name,
        )
        blocks = tokenize_and_group(
            raw,
            tokenizer,
            data_args.max_seq_length,
            data_args.text_column_name,
            data_args.preprocessing_num_workers,
            not data_args.overwrite_cache,
            data_args.packing,
        )
    masker = DataCollatorForDebertaMLM(
        tokenizer, mlm_probability=data_args.mlm_probability, masking=data_args.masking, max_ngram=data_args.max_ngram
    )
    train_dataset, eval_dataset = blocks["train"], blocks["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    return train_dataset, mask_once(eval_dataset, masker, data_args.eval_mask_seed), masker


def load_raw_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_split_percentage: int = 5,
    text_column: str = "text",
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Train and validation text from the Hub (`dataset_name`) or local files; validation carved from train if absent.

    Returns a DatasetDict with one column, `text_column`, and no blank rows.
    """
    if dataset_name:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        where = dataset_name
    else:
        if not train_file:
            raise ValueError("give --dataset_name or --train_file")
        files = {"train": train_file, **({"validation": validation_file} if validation_file else {})}
        raw = datasets.DatasetDict({split: read_table(path, split, cache_dir) for split, path in files.items()})
        where = train_file
    if "train" not in raw:
        raise ValueError(f"{where} has no train split; splits: {list(raw)}")
    if text_column not in raw["train"].column_names:
        raise ValueError(f"{where} has no text column {text_column!r}; columns: {raw['train'].column_names}")
    if "validation" not in raw:
        held_out = max(1, len(raw["train"]) * validation_split_percentage // 100)
        raw = datasets.DatasetDict(
            train=raw["train"].select(range(held_out, len(raw["train"]))),
            validation=raw["train"].select(range(held_out)),
        )
    raw = datasets.DatasetDict({split: raw[split] for split in ("train", "validation")})
    raw = raw.select_columns([text_column])
    kept = raw.filter(lambda row: bool(row[text_column] and row[text_column].strip()), desc="Dropping blank rows")
    for split in kept:  # blank lines separate paragraphs in text corpora: skipped, and counted
        logger.info("%s: skipped %d blank rows of %d", split, len(raw[split]) - len(kept[split]), len(raw[split]))
    return kept


def tokenize_and_group(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    text_column: str = "text",
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
    packing: str = "concatenate",
) -> datasets.DatasetDict:
    """Tokenise, concatenate and cut into blocks of exactly `max_seq_length` (the tail is dropped).

    `packing="concatenate"`: each block is [CLS] pieces [SEP], its pieces running across documents (rows of `raw`).
    `packing="documents"`: each document is [CLS] pieces [SEP], and the blocks cut from their concatenation get a
    `position_ids` column, each token's position within its document's part of the block (`document_positions`).
    """
    if packing not in PACKING:
        raise ValueError(f"packing={packing!r} is invalid; allowed: {list(PACKING)}")
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    def tokenize(batch):
        pieces = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
        if packing == "documents":
            pieces = [[cls, *ids, sep] for ids in pieces]
        return {"input_ids": pieces}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        if packing == "documents":
            usable = len(ids) // max_seq_length * max_seq_length
            starts = np.zeros(len(ids), dtype=bool)
            starts[np.cumsum([0, *map(len, batch["input_ids"][:-1])])] = True
            return {
                "input_ids": [ids[start : start + max_seq_length] for start in range(0, usable, max_seq_length)],
                "position_ids": document_positions(starts[:usable].reshape(-1, max_seq_length)).tolist(),
            }
        block = max_seq_length - 2
        usable = len(ids) // block * block
        return {"input_ids": [[cls, *ids[start : start + block], sep] for start in range(0, usable, block)]}

    tokenized = raw.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=[text_column],
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing",
    )
    grouped = tokenized.map(
        group,
        batched=True,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        desc=f"Grouping into blocks of {max_seq_length} ({packing})",
    )
    for split, dataset in grouped.items():
        if len(dataset) == 0:
            raise ValueError(
                f"the {split} split has fewer than {max_seq_length} tokens: no block to train or evaluate on"
            )
    return grouped


def document_positions(starts: np.ndarray) -> np.ndarray:
    """(B, N) int64 positions from bool (B, N) document starts: 0 at each start, counting up until the next.

    A block's first token is a start too: a document cut by a block boundary continues in the next block from
    position 0, not from its offset in the document. Its continuation is a context of its own (it cannot attend to
    the part before the boundary), and the enhanced mask decoder's absolute positions stay within the block's length,
    which `check_max_seq_length` holds to max_position_embeddings.
    """
    starts = starts.copy()
    starts[:, 0] = True
    columns = np.broadcast_to(np.arange(starts.shape[1]), starts.shape)
    last_start = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
    return (columns - last_start).astype(np.int64)


def mask_once(dataset: datasets.Dataset, collator: DataCollatorForDebertaMLM, seed: int) -> datasets.Dataset:
    """Mask an evaluation set once, with its own seed, so every evaluation and every model sees the same masks.

    The collator leaves examples that already carry labels as they are. torch's global generator is untouched.
    """

    def mask(batch):
        ids = torch.tensor(batch["input_ids"])
        masked, labels = collator.mask_tokens(ids, torch.ones_like(ids))
        return {"input_ids": masked.tolist(), "labels": labels.tolist()}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Fixed-length blocks, one batch: the masks depend only on the seed.
        return dataset.map(
            mask, batched=True, batch_size=len(dataset), load_from_cache_file=False, desc="Masking the evaluation set"
        )


class MaskingTrainer(DebertaLiteTrainer):
    """A Trainer that masks each training batch inside the training step, with the given collator's strategy.

    Masks drawn in the data collator cannot be replayed after a resume: Trainer fetches the first batch of a resumed
    epoch before it restores the saved RNG state. Drawn here, after that restore, a resumed run masks (and drops
    out) exactly as an uninterrupted one. Evaluation sets arrive masked already (`mask_once`) and pass untouched.
    """

    def __init__(self, *args, masker: DataCollatorForDebertaMLM, **kwargs):
        super().__init__(*args, data_collator=masker.pad, **kwargs)
        self.masker = masker

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "labels" not in inputs:
            input_ids = inputs["input_ids"]
            masked, labels = self.masker.mask_tokens(input_ids.cpu(), inputs["attention_mask"].cpu())
            inputs = {**inputs, "input_ids": masked.to(input_ids.device), "labels": labels.to(input_ids.device)}
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, *args, **kwargs):
        # Decode only the masked positions (the same loss): the vocabulary projection of the rest is wasted work.
        return super().compute_loss(model, {**inputs, "sparse_prediction": True}, *args, **kwargs)


def run_pretraining(
    model,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
    train_dataset: datasets.Dataset | None,
    eval_dataset: datasets.Dataset,
    masker: DataCollatorForDebertaMLM,
    eval_before_training: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> dict:
    """Train (when `train_dataset` is given) and evaluate a masked LM; returns before_*, train_* and eval_* metrics.

    `eval_dataset` must be masked already (`mask_once`), so every evaluation sees the same masks. `callbacks` are
    added to the Trainer's own: a TrainerCallback can, for instance, stop training at a time budget by setting
    `control.should_training_stop`, after which the model is saved and evaluated as after a full run.
    """
    fit_tokenizer_to_model(tokenizer, model.config)  # the saved tokenizer truncates to what the masked LM takes
    trainer = MaskingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        masker=masker,
        compute_metrics=masked_accuracy,
        preprocess_logits_for_metrics=predictions_from_logits,
        callbacks=callbacks,
    )
    metrics = train_and_evaluate(trainer, train_dataset, eval_before_training, add_perplexity)
    if "before_loss" in metrics and "eval_loss" in metrics and trainer.is_world_process_zero():
        print(
            f"validation perplexity {metrics['before_perplexity']:.1f} -> {metrics['eval_perplexity']:.1f}, "
            f"masked-token accuracy {metrics['before_accuracy']:.3f} -> {metrics['eval_accuracy']:.3f}"
        )
    return metrics


def train_and_evaluate(
    trainer: DebertaLiteTrainer,
    train_dataset: datasets.Dataset | None,
    eval_before_training: bool = False,
    add_derived_metrics=lambda metrics, prefix: metrics,
) -> dict:
    """The pretraining runs' course: evaluate before (if asked), train and save, evaluate, then the model card (or the
    push, which writes it). `add_derived_metrics(metrics, prefix)` adds what follows from an evaluation's metrics."""
    training_args = trainer.args
    metrics = {}
    if eval_before_training:
        before = add_derived_metrics(trainer.evaluate(metric_key_prefix="before"), "before")
        trainer.log_metrics("before", before)
        metrics.update(before)
    if train_dataset is not None:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        evaluation = add_derived_metrics(trainer.evaluate(), "eval")
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    if training_args.push_to_hub:  # the final card, with the evaluation results
        trainer.push_to_hub()
    elif trainer.is_world_process_zero() and train_dataset is not None:
        trainer.create_model_card()
    return metrics


def build_masked_lm(
    tokenizer: PreTrainedTokenizerBase,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    config_overrides: str | None = None,
) -> DebertaLiteForMaskedLM:
    """An existing checkpoint, or a new model from a config JSON sized to the tokenizer."""
    if model_name_or_path:
        model = AutoModelForMaskedLM.from_pretrained(model_name_or_path)
        if len(tokenizer) > model.config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        return model
    return DebertaLiteForMaskedLM(new_model_config(tokenizer, config_name, config_overrides))


def new_model_config(
    tokenizer: PreTrainedTokenizerBase, config_name: str | None, config_overrides: str | None = None
) -> DebertaLiteConfig:
    """A config JSON with `config_overrides` applied, its vocabulary and special token ids the tokenizer's."""
    if not config_name:
        raise ValueError("give --model_name_or_path (a checkpoint) or --config_name (a model config JSON)")
    values = json.loads(Path(config_name).read_text())
    values.update(parse_overrides(config_overrides))
    values.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    values.pop("model_type", None)
    return DebertaLiteConfig(**values)


def parse_overrides(overrides: str | None) -> dict:
    """ "hidden_size=64,num_hidden_layers=2" -> {"hidden_size": 64, "num_hidden_layers": 2} (JSON values)."""
    parsed = {}
    for item in filter(None, (overrides or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form name=value")
        name, value = (part.strip() for part in item.split("=", 1))
        try:
            parsed[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name] = value
    return parsed


def predictions_from_logits(logits, labels: torch.Tensor) -> torch.Tensor:
    """For Trainer's `preprocess_logits_for_metrics`: predicted ids laid out like `labels`, -100 elsewhere.

    Accepts DeBERTa-lite's masked-only logits (num_masked, V) and dense logits (B, N, V) alike; keeping the labels'
    shape keeps predictions aligned when batches are gathered across processes.
    """
    logits = logits[0] if isinstance(logits, tuple) else logits
    if logits.dim() == 3:
        return logits.argmax(-1).masked_fill(labels == -100, -100)
    predictions = torch.full_like(labels, -100)
    predictions[labels != -100] = logits.argmax(-1)
    return predictions


def masked_accuracy(eval_prediction) -> dict[str, float]:
    """Masked-token accuracy, for Trainer's `compute_metrics`."""
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    masked = labels != -100
    return {"accuracy": float(np.mean(predictions[masked] == labels[masked])) if masked.any() else float("nan")}


def add_perplexity(metrics: dict, prefix: str = "eval") -> dict:
    """exp(loss) next to the loss; inf when the loss is too large to exponentiate."""
    loss = metrics[f"{prefix}_loss"]
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Replaced token detection (DeBERTa-v3): a generator and a discriminator trained together
# ----------------------------------------------------------------------------------------------------------------

# Each checkpoint's model card reports the evaluation metrics of its own model.
CHECKPOINT_METRICS = {
    DISCRIMINATOR_DIR: ("rtd_loss", "rtd_accuracy", "rtd_f1", "replaced_fraction"),
    GENERATOR_DIR: ("mlm_loss", "mlm_accuracy", "mlm_perplexity"),
}


def build_rtd_model(
    tokenizer: PreTrainedTokenizerBase,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    config_overrides: str | None = None,
    generator_depth: float = 0.5,
    generator_width: float = 1.0,
    embedding_sharing: str = "gdes",
    rtd_lambda: float = 50.0,
) -> ReplacedTokenDetectionModel:
    """A generator and a discriminator: new ones, the discriminator from a config JSON sized to the tokenizer and the
    generator `generator_config(discriminator, generator_depth, generator_width)`; or the two checkpoints of an
    earlier run (`model_name_or_path`/discriminator and /generator), to continue pretraining.

    The tokenizer's special tokens are never scored by the discriminator.
    """
    if model_name_or_path:
        generator = AutoModelForMaskedLM.from_pretrained(model_name_or_path, subfolder=GENERATOR_DIR)
        discriminator = AutoModelForPreTraining.from_pretrained(model_name_or_path, subfolder=DISCRIMINATOR_DIR)
        if len(tokenizer) > discriminator.config.vocab_size:  # before the sharing binds the tables
            generator.resize_token_embeddings(len(tokenizer))
            discriminator.resize_token_embeddings(len(tokenizer))
    else:
        config = new_model_config(tokenizer, config_name, config_overrides)
        discriminator = DebertaLiteForReplacedTokenDetection(config)
        generator = DebertaLiteForMaskedLM(generator_config(config, generator_depth, generator_width))
    # A saved discriminator holds its shared tables folded (E_G + E_delta), and GDES restarts them at the generator's
    # (E_delta = 0): assigned back to the parametrized tables, they unfold into E_delta again.
    embeddings = discriminator.deberta.embeddings
    folded = {
        name: getattr(embeddings, name).weight.detach().clone()
        for name in SHARED_TABLES
        if model_name_or_path and getattr(embeddings, name) is not None
    }
    model = ReplacedTokenDetectionModel(
        generator, discriminator, embedding_sharing, rtd_lambda, special_token_ids=tokenizer.all_special_ids
    )
    with torch.no_grad():
        for name, weight in folded.items():
            table = getattr(embeddings, name)
            if parametrize.is_parametrized(table, "weight"):
                table.weight = weight
    return model


def rtd_per_token(outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What `rtd_counts` needs from a ReplacedTokenDetectionOutput, laid out (B, N) like `labels`: the generator's
    predictions (-100 where nothing is masked) and losses, the discriminator's decisions (1 replaced, 0 original,
    -100 where it is not scored) and losses, and the RTD labels. Fixed shapes keep batches aligned when Trainer
    gathers them across processes."""
    masked = labels != -100
    rtd_labels = outputs.rtd_labels
    scored = rtd_labels != -100
    generator_logits = outputs.generator_logits.detach().float()
    generator_nll = torch.zeros(labels.shape, device=labels.device)
    generator_nll[masked] = F.cross_entropy(generator_logits, labels[masked], reduction="none")
    discriminator_logits = outputs.discriminator_logits.detach().float()
    discriminator_bce = F.binary_cross_entropy_with_logits(
        discriminator_logits, rtd_labels.clamp(min=0).float(), reduction="none"
    )
    return {
        "generator_predictions": predictions_from_logits(generator_logits, labels),
        "generator_nll": generator_nll,
        "discriminator_predictions": (discriminator_logits > 0).long().masked_fill(~scored, -100),
        "discriminator_bce": discriminator_bce.masked_fill(~scored, 0.0),
        "rtd_labels": rtd_labels,
    }


def rtd_counts(per_token: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the tokens of `rtd_per_token`'s tensors, from which `rtd_metrics` computes every metric."""
    masked = labels != -100
    scored = per_token["rtd_labels"] != -100
    replaced = per_token["rtd_labels"] == 1
    flagged = per_token["discriminator_predictions"] == 1
    return {
        "masked": masked.sum(),
        "mlm_nll": per_token["generator_nll"][masked].sum(),
        "mlm_correct": (masked & (per_token["generator_predictions"] == labels)).sum(),
        "scored": scored.sum(),
        "rtd_bce": per_token["discriminator_bce"][scored].sum(),
        "rtd_correct": (scored & (flagged == replaced)).sum(),
        "replaced": replaced.sum(),
        "flagged": flagged.sum(),
        "true_positives": (flagged & replaced).sum(),
    }


def rtd_metrics(counts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The generator's masked-LM loss, perplexity and accuracy; the discriminator's loss, accuracy and F1 on replaced
    tokens (the positive class); the share of scored tokens that were replaced (1 minus the accuracy of always
    answering "original"). nan where there is nothing to count."""
    counts = {name: float(value) for name, value in counts.items()}

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator else float("nan")

    mlm_loss = ratio(counts["mlm_nll"], counts["masked"])
    return {
        "mlm_loss": mlm_loss,
        "mlm_perplexity": math.exp(mlm_loss) if mlm_loss < 700 else float("inf"),
        "mlm_accuracy": ratio(counts["mlm_correct"], counts["masked"]),
        "rtd_loss": ratio(counts["rtd_bce"], counts["scored"]),
        "rtd_accuracy": ratio(counts["rtd_correct"], counts["scored"]),
        "rtd_f1": ratio(2 * counts["true_positives"], counts["flagged"] + counts["replaced"]),
        "replaced_fraction": ratio(counts["replaced"], counts["scored"]),
    }


def replaced_token_metrics(eval_prediction) -> dict[str, float]:
    """`rtd_metrics` over an evaluation set, for Trainer's `compute_metrics` (predictions: `rtd_per_token`'s)."""
    names = ("generator_predictions", "generator_nll", "discriminator_predictions", "discriminator_bce", "rtd_labels")
    per_token = {name: torch.from_numpy(array) for name, array in zip(names, eval_prediction.predictions, strict=True)}
    return rtd_metrics(rtd_counts(per_token, torch.from_numpy(eval_prediction.label_ids)))


class ReplacedTokenDetectionTrainer(MaskingTrainer):
    """MaskingTrainer for a ReplacedTokenDetectionModel: batches are masked in the training step (exact resume), the
    loss is the model's (mlm_loss + rtd_lambda * rtd_loss), and `rtd_metrics` are reported in training logs and
    evaluations.

    Checkpoints hold the joint state (E_delta included), which a resume loads back; the final `save_model` writes
    output_dir/discriminator and output_dir/generator, each with the tokenizer. Evaluation draws the generator's
    replacements in a forked random state seeded with `--seed`: every evaluation of a model scores the same
    replacements, and evaluating leaves training's random stream as it was.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, compute_metrics=replaced_token_metrics, **kwargs)
        self._training_counts: dict[str, torch.Tensor] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model's losses are per-batch means (accepts_loss_kwargs = False): Trainer scales them for gradient
        # accumulation, and num_items_in_batch is not needed.
        outputs = model(**inputs)
        per_token = rtd_per_token(outputs, inputs["labels"])
        if model.training:
            for name, value in rtd_counts(per_token, inputs["labels"]).items():
                self._training_counts[name] = self._training_counts.get(name, 0) + value
        return (outputs.loss, per_token) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log ("loss" over the last logging steps) gets the metrics of the same steps, over every process.
        if "loss" in logs and self._training_counts:
            counts = {name: self.accelerator.reduce(value, "sum") for name, value in self._training_counts.items()}
            logs = {**logs, **rtd_metrics(counts)}
            self._training_counts = {}
        super().log(logs, start_time)

    def evaluate(self, *args, **kwargs):
        device = self.args.device
        devices = {"devices": []} if device.type == "cpu" else {"devices": [device], "device_type": device.type}
        with torch.random.fork_rng(**devices):
            torch.manual_seed(self.args.seed)
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        if _internal_call:  # a checkpoint: the joint state, which a resume loads back
            return super().save_model(output_dir, _internal_call)
        output_dir = Path(output_dir or self.args.output_dir)
        model = self._unwrapped_for_saving()
        if self.args.should_save:
            model.save_pretrained(output_dir)
            for name in CHECKPOINT_METRICS:
                self.processing_class.save_pretrained(output_dir / name)

    def _unwrapped_for_saving(self) -> ReplacedTokenDetectionModel:
        """The model with whole tensors: FSDP's shards are gathered (every process takes part) into a new copy."""
        if not self.is_fsdp_enabled:
            return self.accelerator.unwrap_model(self.model)
        state_dict = self.accelerator.get_state_dict(self.model)
        sharded = self.model
        model = ReplacedTokenDetectionModel(
            DebertaLiteForMaskedLM(sharded.generator.config),
            DebertaLiteForReplacedTokenDetection(sharded.discriminator.config),
            sharded.embedding_sharing,
            sharded.rtd_lambda,
            special_token_ids=sharded.special_token_ids.tolist(),
        )
        if self.args.should_save:
            model.load_state_dict(state_dict)
        return model

    def create_model_card(self, *args, **kwargs):
        """A model card in each checkpoint, with its own model's evaluation metrics."""
        if not self.is_world_process_zero():
            return
        results_path = Path(self.args.output_dir, "eval_results.json")
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        for name, metric_names in CHECKPOINT_METRICS.items():
            checkpoint = Path(self.args.output_dir, name)
            own = {key: value for key, value in results.items() if key.removeprefix("eval_") in metric_names}
            if own:
                (checkpoint / "eval_results.json").write_text(json.dumps(own, indent=2))
            write_model_card(checkpoint, hyperparameters=hyperparameters_of(self.args))


def run_rtd_pretraining(
    model: ReplacedTokenDetectionModel,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
    train_dataset: datasets.Dataset | None,
    eval_dataset: datasets.Dataset,
    masker: DataCollatorForDebertaMLM,
    eval_before_training: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> dict:
    """`run_pretraining` for DeBERTa-v3's replaced token detection: train (when `train_dataset` is given) and evaluate
    a generator and a discriminator; returns before_*, train_* and eval_* metrics (`rtd_metrics`, and the joint loss).

    After training, output_dir/discriminator (AutoModelForPreTraining; the encoder to fine-tune) and
    output_dir/generator (AutoModelForMaskedLM) are checkpoints of their own, each with the tokenizer and a model
    card. `eval_dataset` must be masked already (`mask_once`); `callbacks` are added to the Trainer's own.
    """
    if training_args.push_to_hub:
        raise ValueError(
            "--push_to_hub: replaced-token-detection pretraining leaves two checkpoints; push them after training with "
            "scripts/push_to_hub.py OUTPUT_DIR/discriminator REPO and OUTPUT_DIR/generator REPO-generator"
        )
    # The saved tokenizer truncates to what both models take (the generator's enhanced mask decoder caps it).
    fit_tokenizer_to_model(tokenizer, model.generator.config)
    fit_tokenizer_to_model(tokenizer, model.discriminator.config)
    trainer = ReplacedTokenDetectionTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        masker=masker,
        callbacks=callbacks,
    )
    metrics = train_and_evaluate(trainer, train_dataset, eval_before_training)
    if "before_loss" in metrics and "eval_loss" in metrics and trainer.is_world_process_zero():
        print(
            f"discriminator accuracy {metrics['before_rtd_accuracy']:.3f} -> {metrics['eval_rtd_accuracy']:.3f} "
            f"(all-original: {1 - metrics['eval_replaced_fraction']:.3f}), F1 on replaced tokens "
            f"{metrics['before_rtd_f1']:.3f} -> {metrics['eval_rtd_f1']:.3f}; generator masked-token accuracy "
            f"{metrics['before_mlm_accuracy']:.3f} -> {metrics['eval_mlm_accuracy']:.3f}"
        )
    return metrics
