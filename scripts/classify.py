"""Classify sentences with a saved classifier, loaded through AutoModelForSequenceClassification and pipeline().

python scripts/classify.py CHECKPOINT_DIR "A moving, beautifully acted film." "A dull, lifeless mess."
"""

import argparse

from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import deberta_lite  # noqa: F401  (registers the Auto classes; without it, pass trust_remote_code=True)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="directory with the classifier and its tokenizer")
    parser.add_argument("sentences", nargs="+", help="sentences to classify")
    args = parser.parse_args(argv)

    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    results = classify(args.sentences)
    print(f"{type(model).__name__} from {args.checkpoint}:")
    for sentence, result in zip(args.sentences, results, strict=True):
        print(f"  {result['label']:>10} ({result['score']:.3f})  {sentence}")
    return results


if __name__ == "__main__":
    main()
