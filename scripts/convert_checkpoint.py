"""Convert a checkpoint directory between transformers' DebertaV2 and DeBERTa-lite.

The direction comes from the input config's model_type ("deberta-v2" -> DeBERTa-lite, "deberta-lite" ->
DebertaV2). Weights, config and tokenizer files are converted or copied; anything that does not map exactly is an
error.

    python scripts/convert_checkpoint.py --input path/to/deberta-v3-base --output path/to/deberta-lite-base
"""

import argparse
import sys

from deberta_lite.convert import ConversionError, convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="checkpoint directory to convert")
    parser.add_argument("--output", required=True, help="directory to write the converted checkpoint to")
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="read a pytorch_model.bin (pickle) with torch.load(weights_only=True) when there is no safetensors file",
    )
    args = parser.parse_args(argv)
    try:
        direction = convert_checkpoint(args.input, args.output, allow_pickle=args.allow_pickle)
    except (ConversionError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"{direction}: {args.input} -> {args.output}")


if __name__ == "__main__":
    main()
