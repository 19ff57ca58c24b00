"""Benchmark, not a test: does DeBERTa-lite learn, and does it beat BERT at the same size and budget?

Pretrains, with one tokenizer, the same data, steps, batch, learning rate, masking and seed:
  (a) DeBERTa-lite with the enhanced mask decoder,
  (b) DeBERTa-lite without it (the head reads the last layer),
  (c) transformers' BertForMaskedLM with the same hidden size, layers, heads and FFN,
then reports validation loss, perplexity and masked-token accuracy on the same fixed validation masks.

    python scripts/compare_pretraining.py --output_dir outputs/compare_pretraining

By default it trains on the bundled data/wiki_sample; --train_file and --validation_file point at a larger corpus.
"""

import argparse
import json
import time
from pathlib import Path

from transformers import BertConfig, BertForMaskedLM, TrainingArguments, set_seed

from deberta_lite.masking import MASKING_STRATEGIES, DataCollatorForDebertaMLM
from deberta_lite.pretraining import build_masked_lm, load_raw_datasets, mask_once, run_pretraining, tokenize_and_group
from deberta_lite.tokenization import read_text_files, train_unigram_tokenizer


ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT / "data" / "wiki_sample"


def bert_like(deberta_config, tokenizer) -> BertForMaskedLM:
    """BERT of the same width, depth, heads and FFN, with absolute positions for the block length."""
    return BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=deberta_config.hidden_size,
            num_hidden_layers=deberta_config.num_hidden_layers,
            num_attention_heads=deberta_config.num_attention_heads,
            intermediate_size=deberta_config.intermediate_size,
            hidden_act=deberta_config.hidden_act,
            hidden_dropout_prob=deberta_config.hidden_dropout_prob,
            attention_probs_dropout_prob=deberta_config.attention_probs_dropout_prob,
            max_position_embeddings=deberta_config.max_position_embeddings,
            type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", default=str(WIKI / "train.txt"))
    parser.add_argument("--validation_file", default=str(WIKI / "validation.txt"))
    parser.add_argument("--config_name", default=str(ROOT / "configs" / "mini.json"))
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--masking", default="token", choices=MASKING_STRATEGIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "compare_pretraining"))
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)

    tokenizer = train_unigram_tokenizer(read_text_files([args.train_file]), vocab_size=args.vocab_size)
    tokenizer.save_pretrained(output_dir / "tokenizer")
    raw = load_raw_datasets(train_file=args.train_file, validation_file=args.validation_file)
    blocks = tokenize_and_group(raw, tokenizer, args.max_seq_length)
    masker = DataCollatorForDebertaMLM(tokenizer, masking=args.masking)
    eval_dataset = mask_once(blocks["validation"], masker, seed=1234)

    candidates = {
        "DeBERTa-lite, EMD": lambda: build_masked_lm(
            tokenizer, config_name=args.config_name, config_overrides="emd_num_layers=2"
        ),
        "DeBERTa-lite, no EMD": lambda: build_masked_lm(
            tokenizer, config_name=args.config_name, config_overrides="emd_num_layers=0"
        ),
        "BERT": lambda: bert_like(build_masked_lm(tokenizer, config_name=args.config_name).config, tokenizer),
    }
    results = {}
    for name, make_model in candidates.items():
        set_seed(args.seed)
        model = make_model()
        training_args = TrainingArguments(
            output_dir=str(output_dir / name.lower().replace(", ", "_").replace(" ", "_")),
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps,
            weight_decay=0.01,
            seed=args.seed,
            do_eval=True,
            logging_steps=100,
            save_strategy="no",
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
        )
        start = time.perf_counter()
        metrics = run_pretraining(model, tokenizer, training_args, blocks["train"], eval_dataset, masker)
        results[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "eval_loss": metrics["eval_loss"],
            "eval_perplexity": metrics["eval_perplexity"],
            "eval_accuracy": metrics["eval_accuracy"],
            "train_minutes": (time.perf_counter() - start) / 60,
        }
    header = "| model | parameters | validation loss | perplexity | masked-token accuracy | train minutes |"
    rows = [header, "|---|---|---|---|---|---|"] + [
        f"| {name} | {r['parameters'] / 1e6:.2f} M | {r['eval_loss']:.3f} | {r['eval_perplexity']:.1f} | "
        f"{r['eval_accuracy']:.3f} | {r['train_minutes']:.1f} |"
        for name, r in results.items()
    ]
    table = "\n".join(rows)
    print(table)
    (output_dir / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
