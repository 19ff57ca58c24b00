"""Export a DeBERTa-lite sequence classifier or masked LM to ONNX, with dynamic batch and sequence axes.

    python scripts/export_onnx.py --model_name_or_path runs/sentiment --output runs/sentiment/model.onnx

The task comes from the checkpoint's architecture unless --task is given. After exporting, onnxruntime is run on
a few shapes, one longer than the traced one, and the largest difference from PyTorch is printed (--no_check skips
this).
"""

import argparse
import sys

from deberta_lite.export import TASKS, check_onnx, export_onnx


def main(argv=None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="a DeBERTa-lite checkpoint directory or Hub id")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--task", choices=sorted(TASKS), help="default: from the checkpoint's architectures")
    parser.add_argument("--no_check", action="store_true", help="do not compare onnxruntime with PyTorch")
    args = parser.parse_args(argv)
    try:
        path = export_onnx(args.model_name_or_path, args.output, args.task)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {path}")
    if args.no_check:
        return None
    difference = check_onnx(args.model_name_or_path, path, task=args.task)
    print(f"largest |onnxruntime - PyTorch| over the logits: {difference:.2e}")
    return difference


if __name__ == "__main__":
    main()
