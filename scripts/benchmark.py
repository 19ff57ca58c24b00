"""Speed and memory of DeBERTa-lite's attention backends against transformers' DebertaV2 and BertModel.

One process and the same weights: DeBERTa-lite is converted to transformers' DebertaV2 with the converter. BertModel
(sdpa) has the same width, depth, heads, FFN and vocabulary, with weights of its own. For every shape:
- forward latency: the median of --repeats runs after one warm-up, under inference_mode;
- forward+backward step latency, for the --train_shapes;
- peak memory: on CUDA `max_memory_allocated`; on CPU the peak RSS above the level before the call, sampled every
  2 ms by a thread.
Ratios are to BertModel and to DebertaV2 of the same run. On CUDA the flex_attention backend (`deberta_flex`) is
measured too.

    python scripts/benchmark.py                                      # base size, CPU fp32: hours on 2 cores
    python scripts/benchmark.py --shapes 1x512 1x2048 --lean_shapes 1x8192 --train_shapes
    python scripts/benchmark.py --device cuda --dtype bf16           # on a GPU
"""

import argparse
import ctypes
import functools
import gc
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import BertConfig, BertModel, DebertaV2Model

from deberta_lite import DebertaLiteConfig, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint


ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PeakMemory:
    """Peak memory of the block, in bytes above the level at its start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:  # give freed memory back to the OS, so RSS measures this block only
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        process = psutil.Process()
        self.start = process.memory_info().rss
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, process.memory_info().rss - self.start)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss - self.start)


def forward(model, input_ids: torch.Tensor):
    with torch.inference_mode():
        model.eval()(input_ids)


def train_step(model, input_ids: torch.Tensor):
    model.train().zero_grad(set_to_none=True)
    model(input_ids).last_hidden_state.float().pow(2).mean().backward()


def timed(step, device: torch.device, repeats: int) -> tuple[float, int]:
    """Median seconds over `repeats` runs after one warm-up, and the peak memory of one run."""
    step()
    with PeakMemory(device) as memory:
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak


def build_models(size: str, dtype: torch.dtype, device: torch.device) -> dict:
    config = DebertaLiteConfig.from_json_file(ROOT / "configs" / f"{size}.json")
    torch.manual_seed(0)
    lite = DebertaLiteModel(config)
    with tempfile.TemporaryDirectory() as directory:
        lite.save_pretrained(Path(directory) / "lite")
        convert_checkpoint(Path(directory) / "lite", Path(directory) / "v2")
        debertav2 = DebertaV2Model.from_pretrained(Path(directory) / "v2")
    bert = BertModel(
        BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=8192,
            type_vocab_size=1,
            attn_implementation="sdpa",
        ),
        add_pooling_layer=False,
    )

    def same_weights(implementation: str) -> DebertaLiteModel:
        model = DebertaLiteModel(config)
        model.load_state_dict(lite.state_dict())
        model.set_attn_implementation(implementation)
        return model

    models = {
        "deberta_lite": lite,
        "deberta_lite_chunked": same_weights("deberta_chunked"),
        "transformers_debertav2": debertav2,
        "bert_sdpa": bert,
    }
    if device.type == "cuda":  # flex_attention is a fused kernel on GPUs only (on a CPU: unfused, forward only)
        models["deberta_lite_flex"] = same_weights("deberta_flex")
    return {name: model.to(device=device, dtype=dtype) for name, model in models.items()}


def parse_shape(text: str) -> tuple[int, int]:
    batch, length = text.lower().split("x")
    return int(batch), int(length)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", help="a model config in configs/ (base, small, mini, ...)")
    parser.add_argument("--shapes", nargs="*", default=["1x128", "8x128", "1x512", "8x512", "1x2048", "8x2048"])
    parser.add_argument("--lean_shapes", nargs="*", default=["1x8192"], help="DeBERTa-lite only (and BERT)")
    parser.add_argument("--train_shapes", nargs="*", default=["8x128", "8x512"], help="forward+backward steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--output", default=str(ROOT / "outputs" / "benchmark.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    models = build_models(args.size, dtype, device)
    vocab = models["deberta_lite"].config.vocab_size
    rows = []
    plan = (
        [(shape, "forward", list(models)) for shape in args.shapes]
        + [
            (shape, "forward", [name for name in models if name.startswith("deberta_lite") or name == "bert_sdpa"])
            for shape in args.lean_shapes
        ]
        + [(shape, "train step", list(models)) for shape in args.train_shapes]
    )
    for shape, kind, names in plan:
        batch, length = parse_shape(shape)
        input_ids = torch.randint(5, vocab, (batch, length), device=device)
        for name in names:
            step = functools.partial(forward if kind == "forward" else train_step, models[name], input_ids)
            seconds, peak = timed(step, device, args.repeats)
            rows.append({"shape": shape, "kind": kind, "model": name, "seconds": seconds, "peak_bytes": peak})
            print(f"{kind:10s} {shape:>7s} {name:24s} {seconds:8.3f} s  {peak / 2**30:6.2f} GiB", flush=True)
            models[name].zero_grad(set_to_none=True)
    print()
    print(markdown_table(rows, args))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


def markdown_table(rows: list[dict], args) -> str:
    header = (
        f"{args.size} size, {args.dtype}, {args.device}"
        + (f", {args.threads} threads" if args.device == "cpu" else "")
        + f", median of {args.repeats}"
    )
    flex = any(r["model"] == "deberta_lite_flex" for r in rows)
    lines = [
        header,
        "",
        "| step | shape | DeBERTa-lite (sdpa/auto) | DeBERTa-lite chunked | "
        + ("DeBERTa-lite flex | " if flex else "")
        + "transformers DebertaV2 | BertModel (sdpa) | lite / BERT "
        "| DebertaV2 / lite |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if flex else ""),
    ]
    cells = {(r["kind"], r["shape"], r["model"]): r for r in rows}
    for kind, shape in dict.fromkeys((r["kind"], r["shape"]) for r in rows):

        def cell(name, kind=kind, shape=shape):
            r = cells.get((kind, shape, name))
            return f"{r['seconds']:.3f} s / {r['peak_bytes'] / 2**30:.2f} GiB" if r else "—"

        def ratio(a, b, kind=kind, shape=shape):
            ra, rb = cells.get((kind, shape, a)), cells.get((kind, shape, b))
            return (
                f"{ra['seconds'] / rb['seconds']:.2f}× / {ra['peak_bytes'] / max(rb['peak_bytes'], 1):.2f}×"
                if ra and rb
                else "—"
            )

        names = ["deberta_lite", "deberta_lite_chunked"] + (["deberta_lite_flex"] if flex else [])
        cells_text = " | ".join(cell(name) for name in names + ["transformers_debertav2", "bert_sdpa"])
        lines.append(
            f"| {kind} | {shape} | {cells_text} | {ratio('deberta_lite', 'bert_sdpa')} "
            f"| {ratio('transformers_debertav2', 'deberta_lite')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
