"""Fill in [MASK] with a saved masked-LM checkpoint, loaded through AutoModelForMaskedLM and transformers' pipeline.

python scripts/fill_mask.py CHECKPOINT_DIR "The river flows into the [MASK]." [--top_k 5]
"""

import argparse

from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

import deberta_lite  # noqa: F401  (registers the Auto classes; without it, pass trust_remote_code=True)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="directory with the model and its tokenizer")
    parser.add_argument("text", help="text with one [MASK]")
    parser.add_argument("--top_k", type=int, default=5)
    args = parser.parse_args(argv)

    model = AutoModelForMaskedLM.from_pretrained(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=args.top_k)
    predictions = fill(args.text.replace("[MASK]", tokenizer.mask_token))
    print(f"{type(model).__name__} from {args.checkpoint}: {args.text}")
    for prediction in predictions:
        print(f"  {prediction['score']:.3f}  {prediction['token_str']!r:>14}  {prediction['sequence']}")
    return predictions


if __name__ == "__main__":
    main()
