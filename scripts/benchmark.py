"""Speed and memory of DeBERTa-lite's attention backends against transformers' DebertaV2 and BertModel.

One process and the same weights: DeBERTa-lite is converted to transformers' DebertaV2 with the converter. BertModel
(sdpa) has the same width, depth, heads, FFN and vocabulary, with weights of its own. For every shape:
- forward latency: the median of --repeats runs after one warm-up, under inference_mode;
- forward+backward step latency, for the --train_shapes;
- peak memory: on CUDA `max_memory_allocated`; on CPU the peak RSS above the level before the call, sampled every
  2 ms by a thread.
Ratios are to BertModel and to DebertaV2 of the same run. On CUDA the flex_attention backend (`deberta_flex`) is
measured too.

Peer columns, each only when its package imports (`pip install "deberta-lite[bench]"` installs the first):
- "DebertaV2 + disentangled-flash": the converted DebertaV2 with disentangled-flash's encoder swapped in
  (`optimize_deberta`), its Triton backend on CUDA and its PyTorch backend elsewhere; forward rows run its cached
  inference path, train steps its differentiable path (a second copy of the weights, since the package fixes the
  mode when it swaps the encoder).
- "FlashDeBERTa" (CUDA only): `flashdeberta.FlashDebertaV2Model` loaded from the converted DebertaV2 checkpoint.
Both run the --shapes and --train_shapes, padded. Once per shape their eval-mode output is compared with DebertaV2's
(DeBERTa-lite's where DebertaV2 does not run); a difference above the dtype's tolerance is printed as a warning, and
every peer row carries its `max_abs_diff`.

--plot FILE.png draws time and peak memory against sequence length (log-log), one panel row per step kind (forward,
train step), one colour per model (DeBERTa-lite with its default backend, DebertaV2, BertModel, the flex backend and
the peers when measured; the chunked backend, which the default switches to from 1024 tokens, is left out) and one
line style per batch size. --from_json FILE re-prints the table and re-draws the plot from an earlier run's JSON
without measuring anything. Plotting needs matplotlib (the `bench` extra).

--profile replaces the timing run with a breakdown of one training step (forward + backward, train mode, the config's
dropout) of a single DeBERTa-lite layer (model.layers[0], default backend, relative inputs from
model.relative_inputs) and of a BertLayer of the same size, at each of --profile_shapes, with torch.profiler on the
CPU. Every profiler event's self CPU time goes to exactly one category, so the categories add up to the profiler's
total. An event is a backward one when it runs under an `autograd::engine::evaluate_function` event. Its category is
the first that applies:
1. attention kernel: the event or one of its ancestors is a scaled_dot_product op or its backward node (which SDPA
   dispatched to, e.g. `_scaled_dot_product_flash_attention_for_cpu` or the `_scaled_dot_product_attention_math`
   decomposition, is listed under the table);
2. a backward event that is not a recomputation (checkpointed blocks re-run their forward ops in the backward pass,
   with grad enabled): the category of the forward op that recorded its autograd node (same sequence number; the
   node itself, its engine wrapper and the ops under it), so each backward row mirrors its forward row;
3. rules on the op's name and input shapes (B batch, N tokens, H hidden, I FFN size, nh heads, R reachable rows of
   the relative table):
   - softmax: `softmax` in the name; layer norm: `layer_norm` in the name;
   - index/gather: gather, index, index_select, scatter(_add), index_add, index_put, embedding;
   - projections and FFN: addmm/mm/bmm/matmul/linear with a (B*N, H or I) input (either orientation) or a (B, N, H or
     I) one, and the FFN activation on (B, N, I);
   - relative tables: those matmuls with R as one of an input's last two dims instead (the table products
     (B, nh, N, d)·(d, R) and the (R, H) projections of the relative embeddings);
   - bias assembly: add/add_/sub/masked_fill/copy/clone/contiguous/transpose/to/where/sum/fill/zero/expand/empty on a
     4-d tensor (B, nh, *, N) or (B, nh, N, *): the bias blocks, their transposes and the pair mask applied to them;
4. the category of the nearest enclosing event (a copy inside a linear is a projection);
5. other (views, residual adds, dropout outside attention, autograd bookkeeping, gradient accumulation).
Shapes are matched by size, so a profile shape where N or B*N equals H, I, R or d blurs the rules: prefer lengths
different from the hidden size and the relative table's rows.

    python scripts/benchmark.py                                      # base size, CPU fp32: hours on 2 cores
    python scripts/benchmark.py --shapes 1x512 1x2048 --lean_shapes 1x8192 --train_shapes
    python scripts/benchmark.py --device cuda --dtype bf16           # on a GPU
    python scripts/benchmark.py --plot outputs/benchmark.png         # measure, then plot
    python scripts/benchmark.py --from_json outputs/benchmark.json --plot docs/benchmark.png  # plot an earlier run
    python scripts/benchmark.py --profile --profile_shapes 8x512 1x2048
"""

import argparse
import copy
import ctypes
import functools
import gc
import importlib.metadata
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertModel, DebertaV2Model

from deberta_lite import DebertaLiteConfig, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint


ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BENCH_EXTRA = 'pip install "deberta-lite[bench]"'

# Every model the benchmark can measure, in table order, with its column title.
COLUMNS = {
    "deberta_lite": "DeBERTa-lite (sdpa/auto)",
    "deberta_lite_chunked": "DeBERTa-lite chunked",
    "deberta_lite_flex": "DeBERTa-lite flex",
    "transformers_debertav2": "transformers DebertaV2",
    "debertav2_disentangled_flash": "DebertaV2 + disentangled-flash",
    "flashdeberta": "FlashDeBERTa",
    "bert_sdpa": "BertModel (sdpa)",
}
PEERS = ("debertav2_disentangled_flash", "flashdeberta")
# The plot leaves out the chunked backend: the default switches to it from 1024 tokens, so its line would mostly
# lie on DeBERTa-lite's.
PLOTTED = [name for name in COLUMNS if name != "deberta_lite_chunked"]
# Largest |peer - DebertaV2| of the last hidden state accepted without a warning, per dtype.
PEER_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


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


class DisentangledFlashDebertaV2(torch.nn.Module):
    """transformers' DebertaV2 with disentangled-flash's encoder: the cached inference path in eval mode, the
    differentiable one in training.

    disentangled-flash fixes the mode when it swaps the encoder, so each path gets its own copy of the model. The
    inference path needs every sequence length prepared before use (`prepare_for_inference`), and moving it or
    switching it to training drops those preparations: build this after `.to(device, dtype)`, and `train()` here
    only ever switches the training copy.
    """

    def __init__(self, debertav2: DebertaV2Model, backend: str, lengths: list[int]):
        super().__init__()
        from disentangled_flash import optimize_deberta

        self.backend = backend
        self.inference_model = optimize_deberta(
            copy.deepcopy(debertav2).eval(), backend=backend, inference=True, sequence_lengths=sorted(set(lengths))
        )
        self.training_model = optimize_deberta(copy.deepcopy(debertav2), backend=backend, inference=False)
        self.train(False)

    def train(self, mode: bool = True):
        self.training = mode
        self.training_model.train(mode)
        return self

    def forward(self, input_ids: torch.Tensor):
        if self.training:
            return self.training_model(input_ids)
        self.inference_model.encoder.activate_shape(input_ids.shape[1])
        return self.inference_model(input_ids)


def disentangled_flash_peer(debertav2: DebertaV2Model, device: torch.device, lengths: list[int]):
    """The disentangled-flash column's model and its description, or None when the package does not import."""
    try:
        from disentangled_flash import DebertaV2OptimizedEncoder
    except ImportError:
        return None
    # optimize_deberta keeps the plain transformers encoder, silently, when Triton cannot run the model (no Triton,
    # an unsupported head size): the column would then time DebertaV2 itself. Its PyTorch backend always applies.
    backend = "triton" if device.type == "cuda" else "torch"
    model = DisentangledFlashDebertaV2(debertav2, backend, lengths)
    if not isinstance(model.inference_model.encoder, DebertaV2OptimizedEncoder):
        print("disentangled-flash's Triton backend cannot run this model here; using its PyTorch backend")
        model = DisentangledFlashDebertaV2(debertav2, "torch", lengths)
    version = importlib.metadata.version("disentangled-flash")
    return model, f"disentangled-flash {version}, {model.backend} backend"


def flashdeberta_peer(checkpoint: Path, device: torch.device):
    """The FlashDeBERTa column's model (CUDA only: its kernels are Triton's) and its description, or None."""
    if device.type != "cuda":
        return None
    try:
        from flashdeberta import FlashDebertaV2Model
    except ImportError:
        return None
    return FlashDebertaV2Model.from_pretrained(checkpoint), f"flashdeberta {importlib.metadata.version('flashdeberta')}"


def load_config(size: str) -> DebertaLiteConfig:
    return DebertaLiteConfig.from_json_file(ROOT / "configs" / f"{size}.json")


def build_bert(config: DebertaLiteConfig) -> BertModel:
    """BertModel (sdpa) with DeBERTa-lite's width, depth, heads, FFN and vocabulary."""
    return BertModel(
        BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            max_position_embeddings=8192,
            type_vocab_size=1,
            attn_implementation="sdpa",
        ),
        add_pooling_layer=False,
    )


def build_models(size: str, dtype: torch.dtype, device: torch.device, peer_lengths: list[int]) -> tuple[dict, dict]:
    """The measured models by name, and a description of each peer that could be built (its package imports).

    Peers prepare their inference path for `peer_lengths`.
    """
    config = load_config(size)
    torch.manual_seed(0)
    lite = DebertaLiteModel(config)

    def same_weights(implementation: str) -> DebertaLiteModel:
        model = DebertaLiteModel(config)
        model.load_state_dict(lite.state_dict())
        model.set_attn_implementation(implementation)
        return model

    models = {
        "deberta_lite": lite,
        "deberta_lite_chunked": same_weights("deberta_chunked"),
        "bert_sdpa": build_bert(config),
    }
    if device.type == "cuda":  # flex_attention is a fused kernel on GPUs only (on a CPU: unfused, forward only)
        models["deberta_lite_flex"] = same_weights("deberta_flex")
    peers = {}
    with tempfile.TemporaryDirectory() as directory:
        lite.save_pretrained(Path(directory) / "lite")
        convert_checkpoint(Path(directory) / "lite", Path(directory) / "v2")
        models["transformers_debertav2"] = DebertaV2Model.from_pretrained(Path(directory) / "v2")
        flash = flashdeberta_peer(Path(directory) / "v2", device)
        if flash is not None:
            models["flashdeberta"], peers["flashdeberta"] = flash
    models = {name: model.to(device=device, dtype=dtype) for name, model in models.items()}
    disentangled = disentangled_flash_peer(models["transformers_debertav2"], device, peer_lengths)
    if disentangled is not None:
        models["debertav2_disentangled_flash"], peers["debertav2_disentangled_flash"] = disentangled
    return {name: models[name] for name in COLUMNS if name in models}, peers


def parse_shape(text: str) -> tuple[int, int]:
    batch, length = text.lower().split("x")
    return int(batch), int(length)


def train_step_models(models: dict) -> list[str]:
    """The models a train step can run: deberta_flex has no attention dropout, so it sits out when the config has one
    (it would raise rather than train another model than the others)."""
    names = list(models)
    flex = models.get("deberta_lite_flex")
    if flex is not None and flex.config.attention_probs_dropout_prob > 0:
        print("No train step for DeBERTa-lite flex: deberta_flex has no attention dropout and the config has some")
        names.remove("deberta_lite_flex")
    return names


def last_hidden_state(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(input_ids).last_hidden_state.float()


def check_peer(name: str, output: torch.Tensor, reference_name: str, reference: torch.Tensor, dtype: str) -> float:
    """The largest |peer - reference|, with a warning when it exceeds the dtype's tolerance."""
    difference = (output - reference).abs().max().item()
    if not difference <= PEER_TOLERANCE[dtype]:  # also NaN
        print(
            f"WARNING: {COLUMNS[name]} differs from {COLUMNS[reference_name]} by up to {difference:.3g} "
            f"(tolerance {PEER_TOLERANCE[dtype]:g} in {dtype})",
            flush=True,
        )
    return difference


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", help="a model config in configs/ (base, small, mini, ...)")
    parser.add_argument("--shapes", nargs="*", default=["1x128", "8x128", "1x512", "8x512", "1x2048", "8x2048"])
    parser.add_argument("--lean_shapes", nargs="*", default=["1x8192"], help="DeBERTa-lite only (and BERT)")
    parser.add_argument("--train_shapes", nargs="*", default=["8x128", "8x512"], help="forward+backward steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per shape; with --profile, profiled steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--output", help="results JSON (default outputs/benchmark.json, with --profile outputs/profile.json)"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw time and peak memory against sequence length")
    parser.add_argument("--from_json", metavar="FILE", help="table and --plot from an earlier run's JSON, no run")
    parser.add_argument("--profile", action="store_true", help="where one layer's training step spends its time")
    parser.add_argument("--profile_shapes", nargs="*", default=["8x512", "1x2048"])
    parser.add_argument(
        "--profile_inference", action="store_true", help="with --profile: an inference forward, not a training step"
    )
    args = parser.parse_args(argv)
    if args.plot and not plot_available():
        parser.error(f"--plot needs matplotlib, which is not installed: {BENCH_EXTRA}")
    if args.profile and args.from_json:
        parser.error("--profile measures a new run; it does not read --from_json")
    if args.profile and args.device != "cpu":
        parser.error("--profile breaks down CPU time; run it with --device cpu")

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        print(markdown_table(results))
        if args.plot:
            plot(results, args.plot)
        return results["rows"]

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.profile:
        output = Path(args.output or ROOT / "outputs" / "profile.json")
        profiles = profile_layers(args.size, dtype, args.profile_shapes, args.repeats, not args.profile_inference)
        print(profile_markdown(profiles))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"args": vars(args), "profiles": profiles}, indent=2))
        return profiles

    peer_lengths = [parse_shape(shape)[1] for shape in args.shapes + args.train_shapes]
    models, peers = build_models(args.size, dtype, device, peer_lengths)
    vocab = models["deberta_lite"].config.vocab_size
    rows = []
    lean = [name for name in models if name.startswith("deberta_lite") or name == "bert_sdpa"]
    plan = (
        [(shape, "forward", list(models)) for shape in args.shapes]
        + [(shape, "forward", lean) for shape in args.lean_shapes]
        + [(shape, "train step", train_step_models(models)) for shape in args.train_shapes]
    )
    for shape, kind, names in plan:
        batch, length = parse_shape(shape)
        input_ids = torch.randint(5, vocab, (batch, length), device=device)
        if any(name in peers for name in names):
            reference_name = "transformers_debertav2" if "transformers_debertav2" in names else "deberta_lite"
            reference = last_hidden_state(models[reference_name], input_ids)
        for name in names:
            step = functools.partial(forward if kind == "forward" else train_step, models[name], input_ids)
            seconds, peak = timed(step, device, args.repeats)
            row = {"shape": shape, "kind": kind, "model": name, "seconds": seconds, "peak_bytes": peak}
            if name in peers:
                output = last_hidden_state(models[name], input_ids)
                row["max_abs_diff"] = check_peer(name, output, reference_name, reference, args.dtype)
            rows.append(row)
            print(f"{kind:10s} {shape:>7s} {name:28s} {seconds:8.3f} s  {peak / 2**30:6.2f} GiB", flush=True)
            models[name].zero_grad(set_to_none=True)
    results = {"args": vars(args), "peers": peers, "rows": rows}
    print()
    print(markdown_table(results))
    output = Path(args.output or ROOT / "outputs" / "benchmark.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return rows


def markdown_table(results: dict) -> str:
    """The results as a markdown table: one column per measured model, ratios to BERT, to DeBERTa-lite."""
    args, rows, peers = results["args"], results["rows"], results.get("peers", {})
    header = (
        f"{args['size']} size, {args['dtype']}, {args['device']}"
        + (f", {args['threads']} threads" if args["device"] == "cpu" else "")
        + f", median of {args['repeats']}"
        + "".join(f"; {COLUMNS[name]}: {description}" for name, description in peers.items())
    )
    measured = {r["model"] for r in rows}
    names = [name for name in COLUMNS if name in measured]
    # Each ratio is (numerator, denominator, title): DeBERTa-lite against BERT, every DeBERTa peer against DeBERTa-lite.
    ratios = [
        ("deberta_lite", "bert_sdpa", "lite / BERT"),
        ("transformers_debertav2", "deberta_lite", "DebertaV2 / lite"),
    ]
    ratios += [(name, "deberta_lite", f"{COLUMNS[name]} / lite") for name in PEERS if name in measured]
    lines = [
        header,
        "",
        "| step | shape | "
        + " | ".join(COLUMNS[name] for name in names)
        + " | "
        + " | ".join(title for _, _, title in ratios)
        + " |",
        "|---|---|" + "---|" * (len(names) + len(ratios)),
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

        lines.append(
            f"| {kind} | {shape} | "
            + " | ".join(cell(name) for name in names)
            + " | "
            + " | ".join(ratio(a, b) for a, b, _ in ratios)
            + " |"
        )
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Time and peak memory against sequence length: a row of two panels per step kind, a colour per model, a line
    style per batch size."""
    from matplotlib.figure import Figure  # an optional dependency, checked at argument parsing

    rows, args = results["rows"], results["args"]
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    batches = sorted({parse_shape(r["shape"])[0] for r in rows})
    styles = {batch: ["-", "--", ":", "-."][i % 4] for i, batch in enumerate(batches)}
    colours = {name: f"C{i}" for i, name in enumerate(PLOTTED)}
    figure = Figure(figsize=(11, 4 * len(kinds)), layout="constrained")
    figure.suptitle(f"{args['size']} size, {args['dtype']}, {args['device']}")
    axes = figure.subplots(len(kinds), 2, squeeze=False)
    for (time_axis, memory_axis), kind in zip(axes, kinds, strict=True):
        for name in PLOTTED:
            for batch in batches:
                points = sorted(
                    (parse_shape(r["shape"])[1], r["seconds"], r["peak_bytes"] / 2**30)
                    for r in rows
                    if r["kind"] == kind and r["model"] == name and parse_shape(r["shape"])[0] == batch
                )
                if not points:
                    continue
                lengths, seconds, gib = zip(*points, strict=True)
                style = dict(color=colours[name], linestyle=styles[batch], marker="o")
                label = COLUMNS[name] + (f", batch {batch}" if len(batches) > 1 else "")
                time_axis.plot(lengths, seconds, label=label, **style)
                memory_axis.plot(lengths, gib, **style)
        for axis, title, unit in ((time_axis, "time", "seconds"), (memory_axis, "peak memory", "GiB")):
            axis.set(title=f"{kind}: {title}", xlabel="sequence length (tokens)", ylabel=unit)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.grid(True, which="both", alpha=0.3)
    # One legend for the figure, below the panels, where it hides no data.
    legend = {}
    for time_axis, _ in axes:
        for handle, label in zip(*time_axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 3))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


CATEGORIES = [
    "projections and FFN",
    "relative tables",
    "index/gather",
    "bias assembly",
    "attention kernel",
    "softmax",
    "layer norm",
    "other",
]
MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm", "aten::addmv"}
INDEXING = {
    "aten::gather",
    "aten::index",
    "aten::index_select",
    "aten::scatter",
    "aten::scatter_",
    "aten::scatter_add",
    "aten::scatter_add_",
    "aten::index_add_",
    "aten::index_put_",
    "aten::embedding",
}
ACTIVATIONS = {"aten::gelu", "aten::relu", "aten::silu", "aten::tanh"}
BIAS_OPS = {
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::masked_fill",
    "aten::masked_fill_",
    "aten::copy_",
    "aten::clone",
    "aten::contiguous",
    "aten::transpose",
    "aten::to",
    "aten::_to_copy",
    "aten::where",
    "aten::sum",
    "aten::fill_",
    "aten::zero_",
    "aten::expand",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
}
BACKWARD_MARK = "autograd::engine::evaluate_function"


def is_attention_kernel(name: str) -> bool:
    return "scaleddotproduct" in name.replace("_", "").lower()


class LayerShapes:
    """The sizes the profile's rules match input shapes against (see the module docstring)."""

    def __init__(self, batch: int, length: int, config: DebertaLiteConfig, relative_rows: int | None):
        self.batch, self.length, self.heads = batch, length, config.num_attention_heads
        self.widths = {config.hidden_size, config.intermediate_size}
        self.relative_rows = relative_rows
        self.not_query_rows = {config.hidden_size // config.num_attention_heads, relative_rows}

    def token_major(self, shape: list[int]) -> bool:
        tokens = self.batch * self.length
        if len(shape) == 2:
            return (shape[0] == tokens and shape[1] in self.widths) or (shape[1] == tokens and shape[0] in self.widths)
        return len(shape) == 3 and shape[:2] == [self.batch, self.length] and shape[2] in self.widths

    def relative(self, shape: list[int]) -> bool:
        return self.relative_rows is not None and len(shape) >= 2 and self.relative_rows in shape[-2:]

    def bias_sized(self, shape: list[int]) -> bool:
        """(B, nh, q, N): a block of bias rows; (B, nh, N, q): one before its transposition, q neither d nor R."""
        if len(shape) != 4 or shape[:2] != [self.batch, self.heads]:
            return False
        return shape[3] == self.length or (shape[2] == self.length and shape[3] not in self.not_query_rows)

    def rule(self, name: str, shapes: list[list[int]]) -> str | None:
        """Rule 3 of the module docstring: a category from the op's name and input shapes, or None."""
        if "softmax" in name:
            return "softmax"
        if "layer_norm" in name:
            return "layer norm"
        if name in INDEXING:
            return "index/gather"
        if name in MATMULS:
            if any(self.token_major(shape) for shape in shapes):
                return "projections and FFN"
            if any(self.relative(shape) for shape in shapes):
                return "relative tables"
        if name in ACTIVATIONS and any(self.token_major(shape) for shape in shapes):
            return "projections and FFN"
        if name in BIAS_OPS and any(self.bias_sized(shape) for shape in shapes):
            return "bias assembly"
        return None


def classify_events(events, shapes: LayerShapes) -> list[tuple[object, str, bool]]:
    """(event, category, is_backward) for every profiler event, by the rules of the module docstring."""
    events = sorted(events, key=lambda event: event.time_range.start)  # parents before their children
    category, backward, in_attention, by_sequence = {}, {}, {}, {}

    def is_node(event) -> bool:  # an autograd node or its engine wrapper (both carry the node's sequence number)
        return backward[id(event)] and not event.name.startswith("aten::") and event.sequence_nr >= 0

    for event in events:
        parent = event.cpu_parent
        backward[id(event)] = event.name.startswith(BACKWARD_MARK) or (parent is not None and backward[id(parent)])
        recomputed = backward[id(event)] and event.name.startswith("aten::") and event.sequence_nr >= 0
        # By name, not by the parent's category: a checkpointed block's forward, recomputed under a backward node that
        # mirrors an attention op, is not itself attention.
        in_attention[id(event)] = is_attention_kernel(event.name) or (parent is not None and in_attention[id(parent)])
        found = "attention kernel" if in_attention[id(event)] else None
        if found is None and backward[id(event)] and not recomputed:
            node = event
            while node is not None and not is_node(node):
                node = node.cpu_parent
            if node is not None:
                found = by_sequence.get(node.sequence_nr)
        if found is None:
            found = shapes.rule(event.name, [list(shape) for shape in event.input_shapes])
        if found is None:
            found = category[id(parent)] if parent is not None else "other"
        category[id(event)] = found
        # The last forward op to carry a sequence number is the one that recorded the autograd node (ops nested in it
        # and ops that record no node carry the same number before it).
        if event.sequence_nr >= 0 and (not backward[id(event)] or recomputed):
            by_sequence[event.sequence_nr] = found
    return [(event, category[id(event)], backward[id(event)]) for event in events]


def profile_step(layer: torch.nn.Module, inputs: tuple, shapes: LayerShapes, repeats: int, train: bool = True) -> dict:
    """Profile `repeats` training steps of `layer` (after one warm-up), or inference forwards with `train=False`:
    milliseconds per step by category and phase, the SDPA ops that ran, the profiler's own total and the top ops."""
    hidden_states = inputs[0]
    torch.manual_seed(0)
    grad = torch.randn_like(hidden_states)

    def step():
        if not train:
            with torch.inference_mode():
                layer(*inputs)
            return
        layer.zero_grad(set_to_none=True)
        output = layer(*inputs)
        output.backward(grad)

    layer.train(train)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(repeats):
            step()
    events = profiler.events()
    milliseconds = {phase: dict.fromkeys(CATEGORIES, 0.0) for phase in ("forward", "backward")}
    ops = defaultdict(lambda: [0.0, 0])
    kernels = set()
    for event, category, is_backward in classify_events(events, shapes):
        phase = "backward" if is_backward else "forward"
        milliseconds[phase][category] += event.self_cpu_time_total / 1000 / repeats
        if event.name.startswith("aten::"):
            ops[(event.name, phase, category)][0] += event.self_cpu_time_total / 1000 / repeats
            ops[(event.name, phase, category)][1] += 1 / repeats
        if is_attention_kernel(event.name) and event.name.startswith("aten::_"):
            kernels.add(event.name)
    top = sorted(ops.items(), key=lambda item: -item[1][0])[:12]
    return {
        "milliseconds": milliseconds,
        "profiler_total_ms": events.self_cpu_time_total / 1000 / repeats,
        "attention_ops": sorted(kernels),
        "top_ops": [
            {"op": name, "phase": phase, "category": category, "ms": ms, "calls": calls}
            for (name, phase, category), (ms, calls) in top
        ],
    }


def profile_layers(size: str, dtype: torch.dtype, shapes: list[str], repeats: int, train: bool = True) -> list[dict]:
    """One DeBERTa-lite layer and one BertLayer of the same size, profiled at each shape (see --profile)."""
    config = load_config(size)
    torch.manual_seed(0)
    lite = DebertaLiteModel(config).to(dtype)
    bert = build_bert(config).to(dtype)
    profiles = []
    for shape in shapes:
        batch, length = parse_shape(shape)
        hidden_states = torch.randn(batch, length, config.hidden_size, dtype=dtype, requires_grad=True)
        relative_pos, rel_embeddings = lite.relative_inputs(length, hidden_states.device)
        # The layer's gradient reaches the relative embeddings as in the whole model; what lies before them (the
        # table's LayerNorm, once per model) is not part of a layer.
        rel_embeddings = rel_embeddings.detach().requires_grad_()
        relative_rows = rel_embeddings.shape[0]
        for model, layer, inputs, rows in (
            ("DeBERTa-lite", lite.layers[0], (hidden_states, None, relative_pos, rel_embeddings), relative_rows),
            ("BERT", bert.encoder.layer[0], (hidden_states,), None),
        ):
            result = profile_step(layer, inputs, LayerShapes(batch, length, config, rows), repeats, train)
            profiles.append({"model": model, "shape": shape, "relative_rows": rows, "train": train, **result})
    return profiles


def profile_markdown(profiles: list[dict]) -> str:
    """Per model and shape: a table of milliseconds and shares per category and phase, then the top aten ops."""
    lines = []
    for result in profiles:
        forward, backward = result["milliseconds"]["forward"], result["milliseconds"]["backward"]
        totals = {"forward": sum(forward.values()), "backward": sum(backward.values())}
        lines += [
            f"### {result['model']} layer, {result['shape']}, "
            + ("one training step" if result.get("train", True) else "one inference forward")
            + (f" ({result['relative_rows']} relative rows)" if result["relative_rows"] else ""),
            "",
            "| category | forward ms | forward % | backward ms | backward % |",
            "|---|---|---|---|---|",
        ]
        for category in CATEGORIES:
            label = category
            if category == "attention kernel" and result["attention_ops"]:
                label += " (" + ", ".join(op.removeprefix("aten::") for op in result["attention_ops"]) + ")"
            lines.append(
                f"| {label} | {forward[category]:.2f} | {100 * forward[category] / max(totals['forward'], 1e-9):.1f} "
                f"| {backward[category]:.2f} | {100 * backward[category] / max(totals['backward'], 1e-9):.1f} |"
            )
        lines += [
            f"| total | {totals['forward']:.2f} | 100 | {totals['backward']:.2f} | 100 |",
            "",
            "| top aten ops | phase | category | self ms | calls |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {op['op']} | {op['phase']} | {op['category']} | {op['ms']:.2f} | {op['calls']:g} |"
            for op in result["top_ops"]
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
