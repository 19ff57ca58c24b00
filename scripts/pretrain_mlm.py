"""Masked-LM pretraining of DeBERTa-lite (with the enhanced mask decoder) with the Trainer, in the style of run_mlm.

    python scripts/pretrain_mlm.py --config_name configs/small.json --tokenizer_name my-tokenizer \\
        --train_file corpus.txt --output_dir runs/mlm --do_train --do_eval --max_seq_length 512 \\
        --per_device_train_batch_size 32 --learning_rate 5e-4 --max_steps 100000 --bf16

Data: `--dataset_name/--dataset_config_name` (the Hub, when online), `--train_file/--validation_file` (txt, json,
jsonl, csv, parquet), or, with neither, the bundled sample in data/wiki_sample; `--packing documents` keeps each
document (row) of a block on its own (docs/training.md). Multi-process and multi-GPU runs go
through accelerate: `accelerate launch --config_file configs/accelerate/ddp.yaml scripts/pretrain_mlm.py ...`.
Every TrainingArguments option works (`--resume_from_checkpoint`, `--gradient_accumulation_steps`, `--bf16`,
`--fp16`, `--push_to_hub`, ...). `--resume_from_checkpoint latest` picks the newest complete checkpoint in
output_dir: a checkpoint whose save was interrupted is never resumed from (`deberta_lite/checkpoints.py`).
"""

import sys
from pathlib import Path

from transformers import TrainingArguments

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.hub import HubPushError
from deberta_lite.pretraining import (
    DataArguments,
    ModelArguments,
    build_masked_lm,
    check_max_seq_length,
    load_tokenizer,
    parse_arguments,
    pretraining_data,
    run_pretraining,
    start_run,
)


ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = ROOT / "data" / "wiki_sample"
DEFAULT_CONFIG = ROOT / "configs" / "tiny.json"


def main(argv=None) -> dict:
    model_args, data_args, training_args = parse_arguments((ModelArguments, DataArguments, TrainingArguments), argv)
    start_run(training_args)
    tokenizer = load_tokenizer(model_args)
    model = build_masked_lm(
        tokenizer,
        model_args.model_name_or_path,
        model_args.config_name or str(DEFAULT_CONFIG),
        model_args.config_overrides,
    )
    check_max_seq_length(model, data_args.max_seq_length)
    train_dataset, eval_dataset, masker = pretraining_data(data_args, tokenizer, training_args, BUNDLED_CORPUS)
    return run_pretraining(
        model,
        tokenizer,
        training_args,
        train_dataset if training_args.do_train else None,
        eval_dataset,
        masker,
        eval_before_training=data_args.eval_before_training,
    )


if __name__ == "__main__":
    try:
        main()
    except HubPushError as error:
        sys.exit(f"error: {error}")
