"""Quickstart: build a tiny DeBERTa-lite, save it, reload it through AutoModel, check it against transformers.

    python scripts/quickstart.py [--config configs/tiny.json] [--output_dir outputs/quickstart]

Steps: random weights from a model config -> save_pretrained (safetensors + remote code) -> AutoModel reload ->
identical outputs -> convert to transformers' DebertaV2 -> the same hidden states from transformers' own code.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModel, DebertaV2Model

from deberta_lite import DebertaLiteConfig, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint


ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.json"), help="model config JSON")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "quickstart"), help="where to save")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    config = DebertaLiteConfig.from_json_file(args.config)
    model = DebertaLiteModel(config).eval()
    print(f"built DebertaLiteModel from {args.config}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.relative_span} relative buckets")

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir / "deberta-lite")
    print(f"saved to {output_dir / 'deberta-lite'}: {sorted(p.name for p in (output_dir / 'deberta-lite').iterdir())}")

    reloaded = AutoModel.from_pretrained(output_dir / "deberta-lite").eval()
    input_ids = torch.randint(4, config.vocab_size, (2, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    with torch.no_grad():
        original = model(input_ids, attention_mask=attention_mask).last_hidden_state
        again = reloaded(input_ids, attention_mask=attention_mask).last_hidden_state
    print(f"AutoModel reload -> {type(reloaded).__name__}, last_hidden_state {tuple(again.shape)}, "
          f"identical to the saved model: {torch.equal(original, again)}")
    print(f"first token, first 6 features: {[round(v, 4) for v in again[0, 0, :6].tolist()]}")

    convert_checkpoint(output_dir / "deberta-lite", output_dir / "deberta-v2")
    reference = DebertaV2Model.from_pretrained(output_dir / "deberta-v2").eval()
    with torch.no_grad():
        theirs = reference(input_ids, attention_mask=attention_mask).last_hidden_state
    difference = (theirs - original).abs().max().item()
    print(f"converted to transformers' DebertaV2 ({output_dir / 'deberta-v2'}): max |difference| = {difference:.2e}")
    return difference


if __name__ == "__main__":
    main()
