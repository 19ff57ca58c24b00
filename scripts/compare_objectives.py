"""Benchmark, not a test: which pretraining objective gives the better encoder for the same wall-clock time?

Pretrains, with one tokenizer, the same data, discriminator config, batch, learning rate, masking and seed, each for
the same time budget on this machine:
  mlm         masked LM with the enhanced mask decoder (DeBERTa, `run_pretraining`),
  rtd_shared  replaced token detection, one embedding table for generator and discriminator (ELECTRA),
  rtd_gdes    replaced token detection with gradient-disentangled embedding sharing (DeBERTa-v3),
  rtd_none    replaced token detection, a table each,
then fine-tunes each encoder (the masked LM's, or the discriminator) on the bundled classification tasks with
several seeds and reports the mean and spread of the dev metrics per objective.

    python scripts/compare_objectives.py --budget_s 150 --seeds 0 1 2 --tasks sentiment_sample \\
        --output_dir outputs/compare_objectives

Equal time, not equal steps: an RTD step runs a generator and a discriminator, so it is slower than an MLM step.
Each objective first times `--calibration_steps` training steps, then trains for as many steps as fit in
`--budget_s` at that pace (the learning rate schedule then ends where training ends); the table reports the steps
and the measured training seconds of every run. `--steps N` trains every objective for N steps instead.

`mlm_documents` is `mlm` on rows that pack documents apart (`--packing documents`: attention within a document,
positions restarting at each); its validation loss is measured on rows packed the same way, so it compares with the
others through fine-tuning, not through that loss:

    python scripts/compare_objectives.py --objectives mlm mlm_documents --steps 300 --seeds 0 1 2 \
        --output_dir outputs/compare_packing
"""

import argparse
import json
import math
import statistics
from pathlib import Path

from transformers import AutoTokenizer, TrainingArguments, set_seed

import deberta_lite  # noqa: F401  (registers the Auto classes)
from deberta_lite.finetuning import build_trainer, load_classifier, load_local_task, tokenize_task
from deberta_lite.masking import DataCollatorForDebertaMLM
from deberta_lite.pretraining import (
    build_masked_lm,
    build_rtd_model,
    load_raw_datasets,
    mask_once,
    run_pretraining,
    run_rtd_pretraining,
    tokenize_and_group,
)
from deberta_lite.rtd import DISCRIMINATOR_DIR
from deberta_lite.tokenization import read_text_files, train_unigram_tokenizer


ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
WIKI = DATA / "wiki_sample"

# name -> (description, whether it is replaced token detection, embedding sharing, packing of the pretraining rows)
OBJECTIVES = {
    "mlm": ("MLM, enhanced mask decoder", False, None, "concatenate"),
    "mlm_documents": ("MLM, enhanced mask decoder, documents packed apart", False, None, "documents"),
    "rtd_shared": ("RTD, shared embeddings (ES)", True, "shared", "concatenate"),
    "rtd_gdes": ("RTD, gradient-disentangled (GDES)", True, "gdes", "concatenate"),
    "rtd_none": ("RTD, separate embeddings (NES)", True, "none", "concatenate"),
}


def steps_for_budget(budget_s: float, seconds_per_step: float) -> int:
    """The training steps that fit in `budget_s` at `seconds_per_step` (at least one)."""
    if budget_s <= 0 or seconds_per_step <= 0:
        raise ValueError(f"budget and pace must be positive, got {budget_s} s and {seconds_per_step} s/step")
    return max(1, math.floor(budget_s / seconds_per_step))


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for a single value), minimum and maximum."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def cpu_training_args(output_dir: Path, args, **settings) -> TrainingArguments:
    """The settings pretraining and fine-tuning share here (compare_pretraining.py's and compare_finetuning.py's)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=0.06,  # a fraction of the training steps
        weight_decay=0.01,
        logging_steps=50,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        **settings,
    )


def pretrain(objective: str, args, tokenizer, blocks, eval_dataset, max_steps: int, output_dir: Path) -> dict:
    """Pretrain one objective for `max_steps`; returns its metrics and the checkpoint of the encoder to fine-tune."""
    _, is_rtd, sharing, _ = OBJECTIVES[objective]
    set_seed(args.seed)
    if is_rtd:
        model = build_rtd_model(tokenizer, config_name=args.config_name, embedding_sharing=sharing)
    else:
        model = build_masked_lm(tokenizer, config_name=args.config_name, config_overrides="emd_num_layers=2")
    training_args = cpu_training_args(
        output_dir, args, max_steps=max_steps, learning_rate=args.learning_rate, seed=args.seed, do_eval=True
    )
    run = run_rtd_pretraining if is_rtd else run_pretraining
    masker = DataCollatorForDebertaMLM(tokenizer)
    metrics = run(model, tokenizer, training_args, blocks["train"], eval_dataset, masker)
    encoder = output_dir / DISCRIMINATOR_DIR if is_rtd else output_dir
    return {"metrics": metrics, "encoder": str(encoder)}


def finetune(checkpoint: str, task_dir: Path, seed: int, args, output_dir: Path) -> dict:
    """compare_finetuning.py's fine-tuning of a pretrained checkpoint, for one task and seed: dev metrics."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    data, spec = load_local_task(str(task_dir / "train.tsv"), str(task_dir / "validation.tsv"))
    tokenized = tokenize_task(data, spec, tokenizer, args.max_seq_length)
    set_seed(seed)
    model = load_classifier(checkpoint, spec)
    training_args = cpu_training_args(
        output_dir,
        args,
        num_train_epochs=args.finetune_epochs,
        max_steps=args.finetune_max_steps,
        learning_rate=args.finetune_learning_rate,
        seed=seed,
    )
    trainer = build_trainer(model, tokenizer, spec, training_args, tokenized["train"], tokenized["validation"])
    trainer.train()
    metrics = trainer.evaluate()
    return {name: metrics[f"eval_{name}"] for name in ("accuracy", "f1", "loss")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=["mlm", "rtd_shared", "rtd_gdes"], choices=list(OBJECTIVES))
    parser.add_argument("--budget_s", type=float, default=150, help="pretraining seconds per objective")
    parser.add_argument("--calibration_steps", type=int, default=10, help="steps timed to size each budget")
    parser.add_argument("--steps", type=int, default=0, help="when > 0: this many steps for every objective, no budget")
    parser.add_argument("--train_file", default=str(WIKI / "train.txt"))
    parser.add_argument("--validation_file", default=str(WIKI / "validation.txt"))
    parser.add_argument("--tokenizer_name", help="a saved tokenizer; by default one is trained on --train_file")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--config_name", default=str(ROOT / "configs" / "mini.json"), help="the encoder's config")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="pretraining")
    parser.add_argument("--seed", type=int, default=0, help="pretraining")
    parser.add_argument("--data_dir", default=str(DATA), help="a folder with one subfolder per fine-tuning task")
    parser.add_argument("--tasks", nargs="+", default=["sentiment_sample", "trec_sample"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--finetune_epochs", type=float, default=3)
    parser.add_argument("--finetune_max_steps", type=int, default=-1, help="overrides --finetune_epochs when > 0")
    parser.add_argument("--finetune_learning_rate", type=float, default=3e-4)
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "compare_objectives"))
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)

    if args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    else:
        tokenizer = train_unigram_tokenizer(read_text_files([args.train_file]), vocab_size=args.vocab_size)
    raw = load_raw_datasets(train_file=args.train_file, validation_file=args.validation_file)
    data = {}  # packing -> (blocks, fixed validation masks)
    for packing in sorted({OBJECTIVES[objective][3] for objective in args.objectives}):
        blocks = tokenize_and_group(raw, tokenizer, args.max_seq_length, packing=packing)
        data[packing] = blocks, mask_once(blocks["validation"], DataCollatorForDebertaMLM(tokenizer), seed=1234)

    pretraining, finetuning = {}, {}
    for objective in args.objectives:
        blocks, eval_dataset = data[OBJECTIVES[objective][3]]
        steps = args.steps
        if steps <= 0:
            calibration = pretrain(
                objective, args, tokenizer, blocks, eval_dataset, args.calibration_steps, output_dir / "calibration"
            )
            seconds_per_step = calibration["metrics"]["train_runtime"] / args.calibration_steps
            steps = steps_for_budget(args.budget_s, seconds_per_step)
        run = pretrain(objective, args, tokenizer, blocks, eval_dataset, steps, output_dir / objective)
        pretraining[objective] = {
            "steps": steps,
            "train_seconds": run["metrics"]["train_runtime"],
            "eval": {k: v for k, v in run["metrics"].items() if k.startswith("eval_")},
        }
        for task in args.tasks:
            runs = [
                finetune(run["encoder"], Path(args.data_dir) / task, seed, args, output_dir / "finetune" / task)
                for seed in args.seeds
            ]
            finetuning[f"{objective} / {task}"] = {
                "per_seed": runs,
                **{name: spread([r[name] for r in runs]) for name in ("accuracy", "f1")},
            }

    rows = [
        "| objective | task | pretraining steps | pretraining s | MLM validation loss / accuracy "
        "| dev accuracy, mean ± std [min, max] | dev F1, mean ± std |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in finetuning.items():
        objective, task = name.split(" / ")
        acc, f1 = result["accuracy"], result["f1"]
        pretrained = pretraining[objective]["eval"]
        mlm = "—"  # replaced token detection logs its own metrics (see results.json)
        if not OBJECTIVES[objective][1]:
            mlm = f"{pretrained['eval_loss']:.3f} / {pretrained['eval_accuracy']:.3f}"
        rows.append(
            f"| {OBJECTIVES[objective][0]} | {task} | {pretraining[objective]['steps']} | "
            f"{pretraining[objective]['train_seconds']:.0f} | {mlm} | {acc['mean']:.3f} ± {acc['std']:.3f} "
            f"[{acc['min']:.3f}, {acc['max']:.3f}] | {f1['mean']:.3f} ± {f1['std']:.3f} |"
        )
    table = "\n".join(rows)
    print(table)
    results = {"pretraining": pretraining, "finetuning": finetuning}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
