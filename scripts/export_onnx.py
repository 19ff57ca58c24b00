"""Export any DeBERTa-lite head to ONNX, with dynamic batch and sequence axes (and choices, for multiple choice).

    python scripts/export_onnx.py --model_name_or_path runs/sentiment --output runs/sentiment/model.onnx

Tasks: text-classification, fill-mask, token-classification and multiple-choice (output `logits`),
question-answering (`start_logits`, `end_logits`) and feature-extraction, the bare encoder (`last_hidden_state`).
The task comes from the checkpoint's architecture unless --task is given. After exporting, onnxruntime is run on
a few shapes, one longer than the traced one, and the largest difference from PyTorch is printed for each output
(--no_check skips this).
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
    differences = check_onnx(args.model_name_or_path, path, task=args.task)
    for name, difference in differences.items():
        print(f"largest |onnxruntime - PyTorch| over {name}: {difference:.2e}")
    return max(differences.values())


if __name__ == "__main__":
    main()
