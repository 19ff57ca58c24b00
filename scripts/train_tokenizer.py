"""Train a SentencePiece-style Unigram tokenizer, or wrap an existing spm.model, as a DebertaV2Tokenizer directory.

    python scripts/train_tokenizer.py --train_files corpus.txt --vocab_size 8000 --output_dir my-tokenizer
    python scripts/train_tokenizer.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --output_dir tok
    python scripts/train_tokenizer.py --spm_model spm.model --output_dir my-tokenizer

Special tokens: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK]=4. The output loads with AutoTokenizer.from_pretrained.
--model_max_length (default 512) is what `truncation=True` cuts to: set it to the model's max_position_embeddings.
"""

import argparse
import sys

from deberta_lite.tokenization import (
    DEFAULT_MODEL_MAX_LENGTH,
    read_text_files,
    tokenizer_from_spm,
    train_unigram_tokenizer,
)


def dataset_texts(name: str, config_name: str | None, split: str, column: str):
    import datasets

    dataset = datasets.load_dataset(name, config_name, split=split)
    if column not in dataset.column_names:
        raise ValueError(f"dataset {name} has no text column {column!r}; columns: {dataset.column_names}")
    return (row[column] for row in dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train_files", nargs="+", help="UTF-8 text files, one text per line")
    source.add_argument("--dataset_name", help="a datasets name (the Hub, when online)")
    source.add_argument("--spm_model", help="wrap an existing SentencePiece unigram model instead of training")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument(
        "--model_max_length",
        type=int,
        default=DEFAULT_MODEL_MAX_LENGTH,
        help="the longest input of the model (its max_position_embeddings); truncation cuts to it",
    )
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    try:
        if args.spm_model:
            tokenizer = tokenizer_from_spm(args.spm_model, args.model_max_length)
        else:
            texts = (
                read_text_files(args.train_files)
                if args.train_files
                else dataset_texts(args.dataset_name, args.dataset_config_name, args.dataset_split, args.text_column)
            )
            tokenizer = train_unigram_tokenizer(texts, args.vocab_size, args.model_max_length)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved a {len(tokenizer)}-token DebertaV2Tokenizer to {args.output_dir}")
    return tokenizer


if __name__ == "__main__":
    main()
