"""Masked-LM pretraining of DeBERTa-lite (with the enhanced mask decoder) with the Trainer, in the style of run_mlm.

    python scripts/pretrain_mlm.py --config_name configs/small.json --tokenizer_name my-tokenizer \\
        --train_file corpus.txt --output_dir runs/mlm --do_train --do_eval --max_seq_length 512 \\
        --per_device_train_batch_size 32 --learning_rate 5e-4 --max_steps 100000 --bf16

Data: `--dataset_name/--dataset_config_name` (the Hub, when online), `--train_file/--validation_file` (txt, json,
jsonl, csv, parquet), or, with neither, the bundled sample in data/wiki_sample. Multi-process and multi-GPU runs go
through accelerate: `accelerate launch --config_file configs/accelerate/ddp.yaml scripts/pretrain_mlm.py ...`.
Every TrainingArguments option works (`--resume_from_checkpoint`, `--gradient_accumulation_steps`, `--bf16`,
`--fp16`, `--push_to_hub`, ...). `--resume_from_checkpoint latest` picks the newest complete checkpoint in
output_dir: a checkpoint whose save was interrupted is never resumed from (`deberta_lite/checkpoints.py`).
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.hub import HubPushError, check_push_ready
from deberta_lite.masking import MASKING_STRATEGIES, DataCollatorForDebertaMLM
from deberta_lite.pretraining import build_masked_lm, load_raw_datasets, mask_once, run_pretraining, tokenize_and_group


ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = ROOT / "data" / "wiki_sample"
logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A checkpoint to continue pretraining."})
    config_name: str | None = field(
        default=str(ROOT / "configs" / "tiny.json"), metadata={"help": "Model config JSON for a new model."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Override config fields of a new model: 'hidden_size=128,num_hidden_layers=4'."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer directory (scripts/train_tokenizer.py); default: the checkpoint's."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A datasets name (the Hub, when online)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={"help": "txt, json, jsonl, csv or parquet."})
    validation_file: str | None = field(default=None, metadata={"help": "Same type as train_file."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Share of train held out for validation when there is no validation split."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per block, [CLS] and [SEP] included."})
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


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None) -> dict:
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_push_ready(training_args.push_to_hub, training_args.hub_token)  # before any work that could be lost
    set_seed(training_args.seed)

    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if not tokenizer_source:
        raise ValueError("give --tokenizer_name (a directory from scripts/train_tokenizer.py) or --model_name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model = build_masked_lm(
        tokenizer, model_args.model_name_or_path, model_args.config_name, model_args.config_overrides
    )
    if model.uses_emd and data_args.max_seq_length > model.config.max_position_embeddings:
        raise ValueError(
            f"--max_seq_length {data_args.max_seq_length} exceeds max_position_embeddings="
            f"{model.config.max_position_embeddings}, which caps masked LM with the enhanced mask decoder"
        )

    if not (data_args.dataset_name or data_args.train_file):
        logger.info("No data given: using the bundled sample %s", BUNDLED_CORPUS)
        data_args.train_file = str(BUNDLED_CORPUS / "train.txt")
        data_args.validation_file = str(BUNDLED_CORPUS / "validation.txt")
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
        )
    collator = DataCollatorForDebertaMLM(
        tokenizer, mlm_probability=data_args.mlm_probability, masking=data_args.masking, max_ngram=data_args.max_ngram
    )
    train_dataset, eval_dataset = blocks["train"], blocks["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    eval_dataset = mask_once(eval_dataset, collator, data_args.eval_mask_seed)

    return run_pretraining(
        model,
        tokenizer,
        training_args,
        train_dataset if training_args.do_train else None,
        eval_dataset,
        collator,
        eval_before_training=data_args.eval_before_training,
    )


if __name__ == "__main__":
    try:
        main()
    except HubPushError as error:
        sys.exit(f"error: {error}")
