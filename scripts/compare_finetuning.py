"""Benchmark, not a test: does pretraining help? Fine-tune the same model from the pretrained checkpoint of
compare_pretraining.py and from random initialisation, with the same data, steps, batch, learning rate and seed,
on binary sentiment and six question types; report dev metrics.

    python scripts/compare_pretraining.py          # first: it leaves the pretrained checkpoint
    python scripts/compare_finetuning.py --output_dir outputs/compare_finetuning

Each task is a folder of --data_dir holding train.tsv and validation.tsv: by default the samples bundled in data/;
point --data_dir and --tasks at larger splits of the same data sets for the experiment docs/experiments.md reports.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments, set_seed

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.finetuning import build_trainer, head_settings, load_classifier, load_local_task, tokenize_task


ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "compare_pretraining" / "deberta-lite_emd"))
    parser.add_argument("--data_dir", default=str(DATA), help="a folder with one subfolder per task")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["sentiment_sample", "trec_sample"],
        help="subfolders of --data_dir, each with train.tsv and validation.tsv",
    )
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "compare_finetuning"))
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    results = {}
    for task in args.tasks:
        task_dir = Path(args.data_dir) / task
        data, spec = load_local_task(str(task_dir / "train.tsv"), str(task_dir / "validation.tsv"))
        tokenized = tokenize_task(data, spec, tokenizer, args.max_seq_length)
        for start in ("pretrained", "random init"):
            set_seed(args.seed)
            if start == "pretrained":
                model = load_classifier(args.checkpoint, spec)
            else:  # same architecture and head, fresh weights drawn with the same seed
                model = AutoModelForSequenceClassification.from_config(
                    AutoConfig.from_pretrained(args.checkpoint, **head_settings(spec))
                )
            training_args = TrainingArguments(
                output_dir=str(Path(args.output_dir) / task / start.replace(" ", "_")),
                num_train_epochs=args.epochs,
                per_device_train_batch_size=args.batch_size,
                per_device_eval_batch_size=128,
                learning_rate=args.learning_rate,
                warmup_steps=0.06,  # a fraction of the training steps
                weight_decay=0.01,
                seed=args.seed,
                save_strategy="no",
                logging_steps=50,
                use_cpu=True,
                report_to="none",
                disable_tqdm=True,
            )
            trainer = build_trainer(model, tokenizer, spec, training_args, tokenized["train"], tokenized["validation"])
            trainer.train()
            metrics = trainer.evaluate()
            results[f"{task} / {start}"] = {
                k: v for k, v in metrics.items() if k in ("eval_accuracy", "eval_f1", "eval_loss")
            }
    rows = ["| task / start | dev accuracy | dev F1 | dev loss |", "|---|---|---|---|"] + [
        f"| {name} | {r['eval_accuracy']:.3f} | {r['eval_f1']:.3f} | {r['eval_loss']:.3f} |"
        for name, r in results.items()
    ]
    table = "\n".join(rows)
    print(table)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
