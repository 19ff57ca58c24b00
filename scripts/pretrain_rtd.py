"""DeBERTa-v3 pretraining with the Trainer: replaced token detection, a generator and a discriminator trained together.

    python scripts/pretrain_rtd.py --config_name configs/small.json --tokenizer_name my-tokenizer \\
        --train_file corpus.txt --output_dir runs/rtd --do_train --do_eval --max_seq_length 512 \\
        --per_device_train_batch_size 32 --learning_rate 5e-4 --max_steps 100000 --bf16

The generator (a masked LM, `--generator_depth` x the layers and `--generator_width` x the width of the
discriminator in `--config_name`) fills the masked positions with tokens sampled from its predictions; the
discriminator labels every token as original or replaced. The loss is mlm_loss + `--rtd_lambda` x rtd_loss, and the
two share their token embeddings (`--embedding_sharing gdes`, DeBERTa-v3's gradient-disentangled sharing, by
default). At the end output_dir/discriminator (the encoder to fine-tune; AutoModelForPreTraining) and
output_dir/generator (AutoModelForMaskedLM) are written, each with the tokenizer and a model card.

Data, masking, evaluation masks, checkpoints and exact resume, and accelerate launches are pretrain_mlm.py's
(`deberta_lite/pretraining.py`); every TrainingArguments option works except `--push_to_hub` (push the two
checkpoints with scripts/push_to_hub.py). `--model_name_or_path` continues from an earlier run's output_dir.
"""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.pretraining import (
    DataArguments,
    ModelArguments,
    build_rtd_model,
    check_max_seq_length,
    load_tokenizer,
    parse_arguments,
    pretraining_data,
    run_rtd_pretraining,
    start_run,
)
from deberta_lite.rtd import DISCRIMINATOR_DIR, EMBEDDING_SHARING


ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = ROOT / "data" / "wiki_sample"
DEFAULT_CONFIG = ROOT / "configs" / "tiny.json"


@dataclass
class ReplacedTokenDetectionArguments:
    generator_depth: float = field(default=0.5, metadata={"help": "The generator's layers, times the discriminator's."})
    generator_width: float = field(
        default=1.0,
        metadata={"help": "The generator's heads, hidden and intermediate sizes, times the discriminator's."},
    )
    embedding_sharing: str = field(
        default="gdes",
        metadata={
            "help": "gdes (gradient-disentangled, DeBERTa-v3), shared (one table, ELECTRA) or none.",
            "choices": list(EMBEDDING_SHARING),
        },
    )
    rtd_lambda: float = field(default=50.0, metadata={"help": "Weight of the discriminator's loss."})


def main(argv=None) -> dict:
    model_args, rtd_args, data_args, training_args = parse_arguments(
        (ModelArguments, ReplacedTokenDetectionArguments, DataArguments, TrainingArguments), argv
    )
    start_run(training_args)
    if model_args.model_name_or_path and not model_args.tokenizer_name:  # an earlier run saved it with each model
        model_args.tokenizer_name = str(Path(model_args.model_name_or_path, DISCRIMINATOR_DIR))
    tokenizer = load_tokenizer(model_args)
    model = build_rtd_model(
        tokenizer,
        model_args.model_name_or_path,
        model_args.config_name or str(DEFAULT_CONFIG),
        model_args.config_overrides,
        rtd_args.generator_depth,
        rtd_args.generator_width,
        rtd_args.embedding_sharing,
        rtd_args.rtd_lambda,
    )
    check_max_seq_length(model.generator, data_args.max_seq_length)
    train_dataset, eval_dataset, masker = pretraining_data(data_args, tokenizer, training_args, BUNDLED_CORPUS)
    return run_rtd_pretraining(
        model,
        tokenizer,
        training_args,
        train_dataset if training_args.do_train else None,
        eval_dataset,
        masker,
        eval_before_training=data_args.eval_before_training,
    )


if __name__ == "__main__":
    main()
