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

--varlen FILE measures batches of real texts instead of the shape matrix: the texts of a .txt file (one per
non-blank line) or of a .tsv/.csv column (`text`, `sentence`, or the pair `sentence1`/`sentence2`; --varlen_column
names others), tokenized with --tokenizer (default: the bundled data/spm model, offline), truncated at
--varlen_max_length, and --varlen_batches batches of --varlen_batch_size drawn at random (seeded, no length grouping),
right-padded to each batch's longest row as DataCollatorWithPadding does. Ids beyond a small config's vocabulary are
folded into it. Models: DeBERTa-lite unpadded (unpad_batches=True) and padded (unpad_batches=False), BertModel (sdpa),
transformers' DebertaV2, ModernBertModel (sdpa, random weights, the same width, depth, heads and FFN width) and, when
it imports, DebertaV2 + disentangled-flash padded and packed (`encoder.forward_packed` with cu_seqlens). DeBERTa-lite
also runs batches drawn as transformers' `--group_by_length` draws them (LengthGroupedSampler's order). Each row: the
real (non-padding) tokens per second over all batches, the seconds of one pass over them (median of --repeats passes
after a warm-up), its peak memory and the batches' padding fraction; a forward under inference_mode and, with
--varlen_train, a training step per batch (forward and backward of a fixed random readout of the real tokens' last
hidden states). Time is also given relative to BertModel padded and to disentangled-flash packed on the random
batches (their tokens per second over the row's). At every batch, DeBERTa-lite unpadded is compared with padded and
disentangled-flash with DebertaV2 at the real tokens, with a warning above the dtype's tolerance. --plot draws the
relative times as bars. With --profile, --varlen profiles one pass over the random batches instead (after a warm-up),
DeBERTa-lite unpadded against BertModel padded, forward and with --varlen_train a training step: the profiler's self
time grouped by op name (projections and FFN, batched products, index/gather/scatter, zero fills, copies, dropout
masks, GELU/LayerNorm/softmax, the attention kernel, other) and each model's top ops.

--emd_shapes BxN times the masked LM's enhanced mask decoder (EMD) at every position against the masked positions
only (15% masked at random, seeded): forward and backward of `enhanced_mask_decoder` alone on a fixed hidden state,
and a whole MLM training step with sparse_prediction=False (dense: the EMD and the vocabulary projection at every
position) and sparse_prediction=True (masked only). The masked-only rows carry the speedup (all / masked).

    python scripts/benchmark.py                                      # base size, CPU fp32: hours on 2 cores
    python scripts/benchmark.py --shapes 1x512 1x2048 --lean_shapes 1x8192 --train_shapes
    python scripts/benchmark.py --device cuda --dtype bf16           # on a GPU
    python scripts/benchmark.py --plot outputs/benchmark.png         # measure, then plot
    python scripts/benchmark.py --from_json outputs/benchmark.json --plot docs/benchmark.png  # plot an earlier run
    python scripts/benchmark.py --profile --profile_shapes 8x512 1x2048
    python scripts/benchmark.py --varlen data/wiki_sample/train.txt --varlen_train --plot outputs/varlen.png
    python scripts/benchmark.py --varlen data/sentiment_sample/train.tsv --varlen_train --profile --varlen_batches 3
    python scripts/benchmark.py --emd_shapes 8x512
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
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    DataCollatorWithPadding,
    DebertaV2Model,
    ModernBertConfig,
    ModernBertModel,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.trainer_pt_utils import get_length_grouped_indices

from deberta_lite import DebertaLiteConfig, DebertaLiteForMaskedLM, DebertaLiteModel
from deberta_lite.convert import convert_checkpoint
from deberta_lite.data import read_table
from deberta_lite.tokenization import tokenizer_from_spm


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
    # --varlen only
    "deberta_lite_unpadded": "DeBERTa-lite unpadded",
    "deberta_lite_padded": "DeBERTa-lite padded",
    "modernbert": "ModernBERT (sdpa)",
    "debertav2_disentangled_flash_packed": "DebertaV2 + disentangled-flash packed",
}
PEERS = ("debertav2_disentangled_flash", "flashdeberta")
# The plot leaves out the chunked backend: the default switches to it from 1024 tokens, so its line would mostly
# lie on DeBERTa-lite's.
PLOTTED = [name for name in COLUMNS if name != "deberta_lite_chunked"]
# Largest |output - reference| of the last hidden state accepted without a warning, per dtype.
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if self.training:
            return self.training_model(input_ids, attention_mask=attention_mask)
        self.inference_model.encoder.activate_shape(input_ids.shape[1])
        return self.inference_model(input_ids, attention_mask=attention_mask)

    def forward_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        """The varlen path: the embedded real tokens of a right-padded batch packed into one (tokens, H) sequence
        with cu_seqlens (`encoder.forward_packed`), its output padded back to (B, N, H)."""
        from disentangled_flash import pack_padded_with_info, unpack_packed

        model = self.training_model if self.training else self.inference_model
        embedded = model.embeddings(input_ids=input_ids, mask=attention_mask)
        tokens, cu_seqlens, info = pack_padded_with_info(embedded, attention_mask)
        packed = model.encoder.forward_packed(
            tokens, cu_seqlens, info.max_seqlen, packed_info=info, output_hidden_states=False
        ).last_hidden_state
        hidden_states, _ = unpack_packed(packed, cu_seqlens, input_ids.shape[1], packed_info=info)
        return BaseModelOutput(last_hidden_state=hidden_states)


class PackedDisentangledFlash(torch.nn.Module):
    """The disentangled-flash column's model (the same weights) called through its packed varlen path."""

    def __init__(self, model: DisentangledFlashDebertaV2):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        return self.model.forward_packed(input_ids, attention_mask)


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


def same_size(config: DebertaLiteConfig) -> dict:
    """The vocabulary, width, depth, heads and FFN width of `config`, under the names BERT's and ModernBERT's configs
    share with it."""
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return {name: getattr(config, name) for name in names}


def build_bert(config: DebertaLiteConfig) -> BertModel:
    """BertModel (sdpa) with DeBERTa-lite's width, depth, heads, FFN and vocabulary."""
    return BertModel(
        BertConfig(
            **same_size(config),
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            max_position_embeddings=8192,
            type_vocab_size=1,
            attn_implementation="sdpa",
        ),
        add_pooling_layer=False,
    )


def build_modernbert(config: DebertaLiteConfig) -> ModernBertModel:
    """ModernBertModel (sdpa, random weights) with DeBERTa-lite's width, depth, heads, FFN width, vocabulary and
    dropout.

    The rest is ModernBERT's own design: a GLU FFN (so 1.5 times the FFN weights at the same width), rotary positions,
    and sliding-window attention (128 tokens) in two layers of three. The special token ids are the bundled
    tokenizer's ([PAD] 0, [CLS] 1, [SEP] 2) instead of its 50k-vocabulary defaults.
    """
    return ModernBertModel(
        ModernBertConfig(
            **same_size(config),
            embedding_dropout=config.hidden_dropout_prob,
            mlp_dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob,
            pad_token_id=0,
            bos_token_id=1,
            cls_token_id=1,
            eos_token_id=2,
            sep_token_id=2,
            attn_implementation="sdpa",
        )
    )


def default_variants(device: torch.device) -> dict[str, dict]:
    """DeBERTa-lite's columns of the shape matrix: name -> attention implementation and config overrides."""
    variants = {"deberta_lite": {}, "deberta_lite_chunked": {"attn_implementation": "deberta_chunked"}}
    if device.type == "cuda":  # flex_attention is a fused kernel on GPUs only (on a CPU: unfused, forward only)
        variants["deberta_lite_flex"] = {"attn_implementation": "deberta_flex"}
    return variants


def build_models(
    size: str, dtype: torch.dtype, device: torch.device, peer_lengths: list[int], variants: dict | None = None
) -> tuple[dict, dict]:
    """The measured models by name, and a description of each peer that could be built (its package imports).

    DeBERTa-lite runs in each of `variants` (default: `default_variants`), all with the same weights, as
    {name: {"attn_implementation": ..., config field: value}}. Peers prepare their inference path for `peer_lengths`.
    """
    config = load_config(size)
    torch.manual_seed(0)
    lite = DebertaLiteModel(config)

    def variant(attn_implementation: str | None = None, **config_overrides) -> DebertaLiteModel:
        variant_config = copy.deepcopy(config)
        variant_config.update(config_overrides)
        model = DebertaLiteModel(variant_config)
        model.load_state_dict(lite.state_dict())
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        return model

    variants = default_variants(device) if variants is None else variants
    models = {name: lite if not options else variant(**options) for name, options in variants.items()}
    models["bert_sdpa"] = build_bert(config)
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


def last_hidden_state(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(input_ids, attention_mask=attention_mask).last_hidden_state.float()


def check_peer(name: str, output: torch.Tensor, reference_name: str, reference: torch.Tensor, dtype: str) -> float:
    """The largest |output - reference|, with a warning when it exceeds the dtype's tolerance. Names are keys of
    COLUMNS, or titles of their own."""
    difference = (output - reference).abs().max().item()
    if not difference <= PEER_TOLERANCE[dtype]:  # also NaN
        print(
            f"WARNING: {COLUMNS.get(name, name)} differs from {COLUMNS.get(reference_name, reference_name)} by up to "
            f"{difference:.3g} (tolerance {PEER_TOLERANCE[dtype]:g} in {dtype})",
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
        "--output", help="results JSON (default outputs/benchmark.json; profile.json, varlen.json or emd.json)"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw time and peak memory against sequence length")
    parser.add_argument("--from_json", metavar="FILE", help="table and --plot from an earlier run's JSON, no run")
    parser.add_argument("--profile", action="store_true", help="where one layer's training step spends its time")
    parser.add_argument("--profile_shapes", nargs="*", default=["8x512", "1x2048"])
    parser.add_argument(
        "--profile_inference", action="store_true", help="with --profile: an inference forward, not a training step"
    )
    varlen = parser.add_argument_group("--varlen: batches of real texts (see above)")
    varlen.add_argument("--varlen", metavar="FILE", help="a .txt, .tsv or .csv file of texts, e.g. data/*/train.tsv")
    varlen.add_argument(
        "--varlen_column", nargs="+", help="its text column, or two for pairs (default: text, sentence or sentence1/2)"
    )
    varlen.add_argument("--tokenizer", help="a tokenizer directory or a SentencePiece .model (default: data/spm's)")
    varlen.add_argument("--varlen_batch_size", type=int, default=32)
    varlen.add_argument("--varlen_batches", type=int, default=6)
    varlen.add_argument("--varlen_max_length", type=int, default=512, help="truncation, in tokens")
    varlen.add_argument("--varlen_train", action="store_true", help="time training steps too")
    parser.add_argument(
        "--emd_shapes", nargs="*", default=[], help="the masked LM's enhanced mask decoder, all positions or masked"
    )
    args = parser.parse_args(argv)
    if args.plot and not plot_available():
        parser.error(f"--plot needs matplotlib, which is not installed: {BENCH_EXTRA}")
    modes = [
        option
        for option, chosen in (
            ("--from_json", args.from_json),
            ("--profile", args.profile and not args.varlen),
            ("--varlen", args.varlen),
            ("--emd_shapes", args.emd_shapes),
        )
        if chosen
    ]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} are separate runs: pick one")
    if args.profile and args.device != "cpu":
        parser.error("--profile breaks down CPU time; run it with --device cpu")
    if args.plot and (args.profile or args.emd_shapes):
        parser.error("--plot draws the shape matrix and --varlen runs, not --profile or --emd_shapes")

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        mode = results.get("mode")
        if args.plot and mode not in (None, "varlen"):
            parser.error(f"--plot draws the shape matrix and --varlen runs; {args.from_json} holds a {mode} run")
        markdown = {"varlen": varlen_markdown, "emd": emd_markdown, "varlen_profile": varlen_profile_markdown}
        print(markdown.get(mode, markdown_table)(results))
        if args.plot:
            (plot_varlen if mode == "varlen" else plot)(results, args.plot)
        return results.get("rows", results.get("profiles"))

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.profile and args.varlen:
        results = varlen_profile(args, device, dtype)
        print()
        print(varlen_profile_markdown(results))
        write_results(results, args.output, "varlen_profile.json")
        return results["profiles"]
    if args.profile:
        profiles = profile_layers(args.size, dtype, args.profile_shapes, args.repeats, not args.profile_inference)
        print(profile_markdown(profiles))
        write_results({"args": vars(args), "profiles": profiles}, args.output, "profile.json")
        return profiles
    if args.varlen:
        results = varlen_benchmark(args, device, dtype)
        print()
        print(varlen_markdown(results))
        write_results(results, args.output, "varlen.json")
        if args.plot:
            plot_varlen(results, args.plot)
        return results["rows"]
    if args.emd_shapes:
        results = {
            "mode": "emd",
            "args": vars(args),
            "rows": emd_benchmark(args.size, args.dtype, device, args.emd_shapes, args.repeats),
        }
        print()
        print(emd_markdown(results))
        write_results(results, args.output, "emd.json")
        return results["rows"]

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
    write_results(results, args.output, "benchmark.json")
    if args.plot:
        plot(results, args.plot)
    return rows


def write_results(results: dict, output: str | None, default_name: str) -> None:
    """The run's JSON at --output, by default outputs/<default_name>."""
    path = Path(output or ROOT / "outputs" / default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


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


# --varlen: batches of real texts, DeBERTa-lite unpadded and padded against padded models (see the module docstring).
BUNDLED_SPM = ROOT / "data" / "spm" / "unigram_1000.model"
# The text columns looked for, in order, when --varlen_column is not given (two columns: sentence pairs).
TEXT_COLUMNS = (("text",), ("sentence",), ("sentence1", "sentence2"))
VARLEN_SEED = 0
VARLEN_LITE = {"deberta_lite_unpadded": {"unpad_batches": True}, "deberta_lite_padded": {"unpad_batches": False}}
# The models that also run the length-grouped batches.
GROUPED = ("deberta_lite_unpadded", "deberta_lite_padded")
# (model, reference): last hidden states compared at the real tokens of every batch.
VARLEN_CHECKS = (
    ("deberta_lite_unpadded", "deberta_lite_padded"),
    ("debertav2_disentangled_flash", "transformers_debertav2"),
    ("debertav2_disentangled_flash_packed", "transformers_debertav2"),
)
VARLEN_INPUT = {"deberta_lite_unpadded": "unpadded", "debertav2_disentangled_flash_packed": "packed"}
SAMPLINGS = {"random": "random", "grouped": "length-grouped"}
# Relative times are to these, on the random batches.
VARLEN_BASELINES = ("bert_sdpa", "debertav2_disentangled_flash_packed")


def load_tokenizer(source: str | None):
    """--tokenizer: a tokenizer directory, or a SentencePiece .model wrapped as a DebertaV2Tokenizer (by default the
    bundled one, so the benchmark runs offline). Right padding, as the packed peer path needs."""
    if source is None or Path(source).is_file():
        tokenizer = tokenizer_from_spm(source or BUNDLED_SPM)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "right"
    return tokenizer


def varlen_texts(path: str, columns: list[str] | None) -> list[list[str]]:
    """The file's texts as columns (one, or two for pairs), rows with no text left out."""
    table = read_table(path, "varlen")
    if columns is None:
        columns = next((names for names in TEXT_COLUMNS if set(names) <= set(table.column_names)), None)
        if columns is None:
            raise ValueError(f"{path} has no text column among {table.column_names}: name one with --varlen_column")
    missing = [name for name in columns if name not in table.column_names]
    if missing or not 1 <= len(columns) <= 2:
        raise ValueError(f"--varlen_column takes one or two of the columns of {path}, {table.column_names}")
    rows = [[text or "" for text in row] for row in zip(*(table[name] for name in columns), strict=True)]
    rows = [row for row in rows if any(text.strip() for text in row)]
    if not rows:
        raise ValueError(f"{path} has no text in {columns}")
    return [list(column) for column in zip(*rows, strict=True)]


def draw_batches(lengths: list[int], batch_size: int, count: int, grouped: bool) -> list[list[int]]:
    """`count` batches of row indices (seeded), picked at random among the full batches of one epoch over the rows:
    in a random order, or with `grouped` in the length-grouped order of transformers' LengthGroupedSampler
    (`--group_by_length`: megabatches of up to 50 batches sorted by length)."""
    generator = torch.Generator().manual_seed(VARLEN_SEED)
    if grouped:
        order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    epoch = [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
    if len(epoch) < count:
        raise ValueError(
            f"{len(lengths)} texts make {len(epoch)} batches of {batch_size}, fewer than --varlen_batches {count}"
        )
    return [epoch[i] for i in torch.randperm(len(epoch), generator=generator)[:count].tolist()]


def padding_summary(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    real = sum(int(attention_mask.sum()) for _, attention_mask in batches)
    padded = sum(attention_mask.numel() for _, attention_mask in batches)
    return {
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": 1 - real / padded,
        "widths": [attention_mask.shape[1] for _, attention_mask in batches],
    }


def varlen_forward(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.inference_mode():
        model.eval()
        for input_ids, attention_mask in batches:
            model(input_ids, attention_mask=attention_mask)


def varlen_train(model, batches: list[tuple[torch.Tensor, torch.Tensor]], readouts: list[torch.Tensor]) -> None:
    """A training step per batch: forward and backward of a fixed random readout of the real tokens' last hidden
    states (zero at the padding), so every model backpropagates the same loss."""
    model.train()
    for (input_ids, attention_mask), readout in zip(batches, readouts, strict=True):
        model.zero_grad(set_to_none=True)
        (model(input_ids, attention_mask=attention_mask).last_hidden_state.float() * readout).sum().backward()


def varlen_readouts(batches: list[tuple[torch.Tensor, torch.Tensor]], hidden_size: int) -> list[torch.Tensor]:
    """varlen_train's fixed random readout per batch (seeded), zero at the padding, on the batches' device."""
    generator = torch.Generator().manual_seed(VARLEN_SEED)
    return [
        (torch.randn(*input_ids.shape, hidden_size, generator=generator) * attention_mask[..., None].cpu()).to(
            attention_mask.device
        )
        for input_ids, attention_mask in batches
    ]


def varlen_models(size: str, dtype: torch.dtype, device: torch.device, lengths: list[int]) -> tuple[dict, dict]:
    """DeBERTa-lite unpadded and padded, BertModel, DebertaV2, ModernBERT and the disentangled-flash peer padded and
    packed (when it imports), by name in COLUMNS order, and the peers' descriptions."""
    models, peers = build_models(size, dtype, device, lengths, VARLEN_LITE)
    try:
        models["modernbert"] = build_modernbert(models["deberta_lite_padded"].config).to(device=device, dtype=dtype)
    except (ValueError, RuntimeError, TypeError) as error:  # a transformers whose ModernBERT cannot be built here
        print(f"No ModernBERT column: {error}")
    flash = models.get("debertav2_disentangled_flash")
    if flash is not None:
        models["debertav2_disentangled_flash_packed"] = PackedDisentangledFlash(flash)
        peers["debertav2_disentangled_flash_packed"] = peers["debertav2_disentangled_flash"] + ", forward_packed"
    return {name: models[name] for name in COLUMNS if name in models}, peers


def varlen_agreement(models: dict, batches: list, dtype: str) -> dict[str, tuple[str, float]]:
    """model -> (its reference, the largest difference of their last hidden states at the real tokens of every
    batch), warned about above the dtype's tolerance."""
    checks = [(name, reference) for name, reference in VARLEN_CHECKS if name in models and reference in models]
    outputs = {
        name: torch.cat(
            [
                last_hidden_state(models[name], input_ids, attention_mask)[attention_mask.bool()]
                for input_ids, attention_mask in batches
            ]
        )
        for name in dict.fromkeys(name for pair in checks for name in pair)
    }
    return {
        name: (reference, check_peer(name, outputs[name], reference, outputs[reference], dtype))
        for name, reference in checks
    }


def varlen_batches(args, device: torch.device) -> tuple[DebertaLiteConfig, dict, dict]:
    """The --varlen file's texts as padded batches per sampling (random, length-grouped): the config, each
    sampling's summary (rows, padding) and its (input_ids, attention_mask) batches."""
    tokenizer = load_tokenizer(args.tokenizer)
    texts = varlen_texts(args.varlen, args.varlen_column)
    token_ids = tokenizer(*texts, truncation=True, max_length=args.varlen_max_length)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    rows_of = {
        sampling: draw_batches(lengths, args.varlen_batch_size, args.varlen_batches, sampling == "grouped")
        for sampling in SAMPLINGS
    }
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    config = load_config(args.size)
    if len(tokenizer) > config.vocab_size:
        # Speed depends on the lengths, not on which ids fill them (a tiny config's vocabulary is smaller).
        print(f"Token ids folded into the {args.size} config's {config.vocab_size}-entry vocabulary")
    samplings, batches = {}, {}
    for sampling, rows in rows_of.items():
        batches[sampling] = []
        for batch_rows in rows:
            batch = collator([{"input_ids": token_ids[i]} for i in batch_rows])
            input_ids = batch["input_ids"] % config.vocab_size
            batches[sampling].append((input_ids.to(device), batch["attention_mask"].to(device)))
        samplings[sampling] = {"rows": rows, **padding_summary(batches[sampling])}
    return config, samplings, batches


def varlen_benchmark(args, device: torch.device, dtype: torch.dtype) -> dict:
    """--varlen: every model over the random batches, DeBERTa-lite also over length-grouped ones, forward and (with
    --varlen_train) training steps; real tokens per second."""
    config, samplings, batches = varlen_batches(args, device)
    models, peers = varlen_models(args.size, dtype, device, samplings["random"]["widths"])
    kinds = ["forward", "train step"] if args.varlen_train else ["forward"]
    results = []
    for sampling, sampling_batches in batches.items():
        names = list(models) if sampling == "random" else [name for name in GROUPED if name in models]
        agreement = varlen_agreement({name: models[name] for name in names}, sampling_batches, args.dtype)
        readouts = varlen_readouts(sampling_batches, config.hidden_size)
        for kind in kinds:
            for name in names:
                if kind == "forward":
                    step = functools.partial(varlen_forward, models[name], sampling_batches)
                else:
                    step = functools.partial(varlen_train, models[name], sampling_batches, readouts)
                seconds, peak = timed(step, device, args.repeats)
                real_tokens = samplings[sampling]["real_tokens"]
                row = {
                    "batches": sampling,
                    "kind": kind,
                    "model": name,
                    "seconds": seconds,
                    "peak_bytes": peak,
                    "real_tokens": real_tokens,
                    "tokens_per_s": real_tokens / seconds,
                    "padding_fraction": samplings[sampling]["padding_fraction"],
                }
                if name in agreement:
                    row["reference"], row["max_abs_diff"] = agreement[name]
                results.append(row)
                print(
                    f"{kind:10s} {sampling:7s} {name:36s} {seconds:8.3f} s  {real_tokens / seconds:9.0f} tokens/s  "
                    f"{peak / 2**30:6.2f} GiB",
                    flush=True,
                )
                models[name].zero_grad(set_to_none=True)
    return {"mode": "varlen", "args": vars(args), "peers": peers, "samplings": samplings, "rows": results}


def relative_times(results: dict) -> dict[tuple[str, str, str], dict[str, float]]:
    """(batches, kind, model) -> time relative to BertModel padded and to the packed peer, over the random batches
    of the same step kind: their real tokens per second over the row's."""
    rows = results["rows"]
    baselines = {
        (r["kind"], r["model"]): r["tokens_per_s"]
        for r in rows
        if r["batches"] == "random" and r["model"] in VARLEN_BASELINES
    }
    return {
        (r["batches"], r["kind"], r["model"]): {
            name: baselines[(r["kind"], name)] / r["tokens_per_s"]
            for name in VARLEN_BASELINES
            if (r["kind"], name) in baselines
        }
        for r in rows
    }


def varlen_markdown(results: dict) -> str:
    """One row per batches, step and model: real tokens per second, seconds over all batches, peak memory, relative
    time to BertModel padded and to the packed peer on the random batches, and the agreement checks."""
    args, samplings = results["args"], results["samplings"]
    header = (
        f"{args['size']} size, {args['dtype']}, {args['device']}"
        + (f", {args['threads']} threads" if args["device"] == "cpu" else "")
        + f", median of {args['repeats']} passes; {args['varlen']}: {args['varlen_batches']} batches of "
        + f"{args['varlen_batch_size']}, truncated at {args['varlen_max_length']} tokens; padding "
        + ", ".join(f"{SAMPLINGS[s]} {100 * summary['padding_fraction']:.1f}%" for s, summary in samplings.items())
        + "".join(f"; {COLUMNS[name]}: {description}" for name, description in results.get("peers", {}).items())
    )
    relative = relative_times(results)
    lines = [
        header,
        "",
        "| batches | step | model | input | real tokens/s | seconds | peak GiB | time / BERT padded "
        "| time / disentangled-flash packed | max abs diff (reference) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratios = relative[(r["batches"], r["kind"], r["model"])]
        cells = [
            SAMPLINGS[r["batches"]],
            r["kind"],
            COLUMNS[r["model"]],
            VARLEN_INPUT.get(r["model"], "padded"),
            f"{r['tokens_per_s']:.0f}",
            f"{r['seconds']:.3f}",
            f"{r['peak_bytes'] / 2**30:.2f}",
            *(f"{ratios[name]:.2f}×" if name in ratios else "—" for name in VARLEN_BASELINES),
            f"{r['max_abs_diff']:.2g} ({COLUMNS[r['reference']]})" if "reference" in r else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_varlen(results: dict, path: str) -> None:
    """A bar per model and batches: time relative to BertModel padded on the random batches, one panel per step kind."""
    from matplotlib.figure import Figure  # an optional dependency, checked at argument parsing

    relative, args = relative_times(results), results["args"]
    kinds = list(dict.fromkeys(r["kind"] for r in results["rows"]))
    figure = Figure(figsize=(9, 0.4 * len(results["rows"]) + 1.5 * len(kinds)), layout="constrained")
    figure.suptitle(
        f"{args['size']} size, {args['dtype']}, {args['device']}: {args['varlen_batches']} batches of "
        f"{args['varlen_batch_size']} from {Path(args['varlen']).name}"
    )
    for axis, kind in zip(figure.subplots(len(kinds), 1, squeeze=False)[:, 0], kinds, strict=True):
        rows = [
            r
            for r in results["rows"]
            if r["kind"] == kind and "bert_sdpa" in relative[(r["batches"], kind, r["model"])]
        ]
        labels = [
            f"{COLUMNS[r['model']]} ({SAMPLINGS[r['batches']]} batches)"
            if r["batches"] != "random"
            else COLUMNS[r["model"]]
            for r in rows
        ]
        values = [relative[(r["batches"], kind, r["model"])]["bert_sdpa"] for r in rows]
        axis.barh(labels, values, color=[f"C{PLOTTED.index(r['model']) % 10}" for r in rows])
        axis.axvline(1, color="black", linewidth=0.8)
        axis.invert_yaxis()  # table order, top to bottom
        axis.set(title=kind, xlabel="time relative to BertModel (sdpa) padded on the random batches")
        axis.grid(True, axis="x", alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


# --emd_shapes: the masked LM's enhanced mask decoder at every position against the masked ones only.
MASK_FRACTION = 0.15
EMD_VARIANTS = ("all positions", "masked only")


def emd_step(model, hidden_states, attention_mask, masked: torch.Tensor | None, readout: torch.Tensor) -> None:
    """Forward and backward of the enhanced mask decoder alone (train mode) on a fixed second-to-last hidden state, at
    every position (masked=None) or at the masked ones, through a fixed random readout of its output."""
    model.train().zero_grad(set_to_none=True)
    hidden_states.grad = None
    output = model.enhanced_mask_decoder(hidden_states, attention_mask, None, masked)
    (output.float() * (readout if masked is None else readout[masked])).sum().backward()


def mlm_step(model, input_ids, attention_mask, labels, sparse_prediction: bool) -> None:
    model.train().zero_grad(set_to_none=True)
    model(input_ids, attention_mask=attention_mask, labels=labels, sparse_prediction=sparse_prediction).loss.backward()


def emd_benchmark(size: str, dtype: str, device: torch.device, shapes: list[str], repeats: int) -> list[dict]:
    """At each shape, with 15% of the positions masked (seeded): the EMD alone and a whole MLM training step, each at
    every position and at the masked ones only. The masked-only rows carry the speedup (all / masked) and the
    largest difference of the masked-only EMD output from the full one at the masked positions (eval mode)."""
    config = load_config(size)
    torch.manual_seed(0)
    model = DebertaLiteForMaskedLM(config).to(device=device, dtype=DTYPES[dtype])
    if not model.uses_emd:
        raise ValueError(f"the {size} config has no enhanced mask decoder (emd_num_layers=0 or position_biased_input)")
    rows = []
    for shape in shapes:
        batch, length = parse_shape(shape)
        generator = torch.Generator().manual_seed(0)
        hidden_states = torch.randn(batch, length, config.hidden_size, generator=generator)
        readout = torch.randn(batch, length, config.hidden_size, generator=generator).to(device)
        masked = (torch.rand(batch, length, generator=generator) < MASK_FRACTION).to(device)
        input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator).to(device)
        hidden_states = hidden_states.to(device=device, dtype=DTYPES[dtype]).requires_grad_()
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        labels = torch.where(masked, input_ids, -100)
        with torch.no_grad():
            model.eval()
            full = model.enhanced_mask_decoder(hidden_states, attention_mask, None)[masked].float()
            part = model.enhanced_mask_decoder(hidden_states, attention_mask, None, masked).float()
        difference = check_peer("EMD at the masked positions", part, "EMD at every position", full, dtype)
        steps = {
            "EMD forward+backward": [
                functools.partial(emd_step, model, hidden_states, attention_mask, selection, readout)
                for selection in (None, masked)
            ],
            "MLM train step": [
                functools.partial(mlm_step, model, input_ids, attention_mask, labels, sparse)
                for sparse in (False, True)
            ],
        }
        for kind, (all_positions, masked_only) in steps.items():
            full_seconds, full_peak = timed(all_positions, device, repeats)
            seconds, peak = timed(masked_only, device, repeats)
            common = {"shape": shape, "kind": kind, "masked_fraction": float(masked.float().mean())}
            rows += [
                {**common, "variant": "all positions", "seconds": full_seconds, "peak_bytes": full_peak},
                {
                    **common,
                    "variant": "masked only",
                    "seconds": seconds,
                    "peak_bytes": peak,
                    "speedup": full_seconds / seconds,
                    **({"max_abs_diff": difference} if kind == "EMD forward+backward" else {}),
                },
            ]
            print(f"{kind:22s} {shape:>7s} all {full_seconds:8.3f} s, masked only {seconds:8.3f} s", flush=True)
    return rows


def emd_markdown(results: dict) -> str:
    args = results["args"]
    lines = [
        f"{args['size']} size, {args['dtype']}, {args['device']}"
        + (f", {args['threads']} threads" if args["device"] == "cpu" else "")
        + f", median of {args['repeats']}; {100 * MASK_FRACTION:g}% of the positions masked at random",
        "",
        "| shape | step | all positions | masked only | speedup (all / masked) | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    cells = {(r["shape"], r["kind"], r["variant"]): r for r in results["rows"]}
    for shape, kind in dict.fromkeys((r["shape"], r["kind"]) for r in results["rows"]):
        full, masked = cells[(shape, kind, "all positions")], cells[(shape, kind, "masked only")]
        difference = f"{masked['max_abs_diff']:.2g}" if "max_abs_diff" in masked else "—"
        lines.append(
            f"| {shape} | {kind} | {full['seconds']:.3f} s / {full['peak_bytes'] / 2**30:.2f} GiB "
            f"| {masked['seconds']:.3f} s / {masked['peak_bytes'] / 2**30:.2f} GiB | {masked['speedup']:.2f}× "
            f"| {difference} |"
        )
    lines += [
        "",
        "EMD forward+backward: `enhanced_mask_decoder` alone on a fixed hidden state. MLM train step, all positions: "
        "`sparse_prediction=False` (dense logits: the EMD and the vocabulary projection at every position); masked "
        "only: `sparse_prediction=True`.",
    ]
    return "\n".join(lines)


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


# --varlen with --profile: where a pass over the random batches goes, DeBERTa-lite unpadded against BertModel padded,
# by op name (the shape rules of --profile need one fixed shape).
VARLEN_PROFILED = ("deberta_lite_unpadded", "bert_sdpa")
OP_GROUPS = {
    "projections and FFN (addmm, mm)": {"aten::addmm", "aten::mm"},
    "batched products (bmm: relative tables; attention scores on the math path)": {"aten::bmm", "aten::baddbmm"},
    "index, gather, scatter (unpadding, bias lookup, their backward)": INDEXING
    | {"aten::index_add", "aten::_index_put_impl_", "aten::embedding_dense_backward"},
    "zero fills (gradient buffers: the embedding table's is the largest)": {"aten::fill_", "aten::zero_"},
    "copies": {"aten::copy_", "aten::cat", "aten::clone"},
    "dropout masks": {"aten::bernoulli_"},
    "GELU, LayerNorm, softmax and their backward": {
        "aten::gelu",
        "aten::gelu_backward",
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::_softmax",
        "aten::_softmax_backward_data",
    },
}


def op_group(name: str) -> str:
    if is_attention_kernel(name) and name.startswith("aten::_"):
        return "attention kernel"
    return next((group for group, names in OP_GROUPS.items() if name in names), "other")


def varlen_profile(args, device: torch.device, dtype: torch.dtype) -> dict:
    """--varlen --profile: one profiled pass over the random batches per model and step (after a warm-up pass):
    milliseconds by op group and the top aten ops."""
    config, samplings, batches = varlen_batches(args, device)
    batches = batches["random"]
    models, _ = varlen_models(args.size, dtype, device, samplings["random"]["widths"])
    readouts = varlen_readouts(batches, config.hidden_size)
    profiles = []
    for kind in ["forward", "train step"] if args.varlen_train else ["forward"]:
        for name in VARLEN_PROFILED:
            if kind == "forward":
                step = functools.partial(varlen_forward, models[name], batches)
            else:
                step = functools.partial(varlen_train, models[name], batches, readouts)
            step()
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                step()
            groups, ops = dict.fromkeys([*OP_GROUPS, "attention kernel", "other"], 0.0), defaultdict(float)
            for event in profiler.events():
                milliseconds = event.self_cpu_time_total / 1000
                groups[op_group(event.name)] += milliseconds
                if event.name.startswith("aten::"):
                    ops[event.name] += milliseconds
            top = [{"op": op, "ms": ms} for op, ms in sorted(ops.items(), key=lambda item: -item[1])[:10]]
            profiles.append({"model": name, "kind": kind, "groups": groups, "top_ops": top})
            print(f"{kind:10s} {name:28s} {sum(groups.values()) / 1000:8.3f} s profiled", flush=True)
            models[name].zero_grad(set_to_none=True)
    return {"mode": "varlen_profile", "args": vars(args), "samplings": samplings, "profiles": profiles}


def varlen_profile_markdown(results: dict) -> str:
    """Per step: milliseconds (and share) by op group for each profiled model, then each model's top ops."""
    args, random = results["args"], results["samplings"]["random"]
    lines = [
        f"{args['size']} size, {args['dtype']}, {args['device']}: one pass over {args['varlen_batches']} random "
        f"batches of {args['varlen_batch_size']} from {Path(args['varlen']).name} ({random['real_tokens']} real "
        f"tokens, {100 * random['padding_fraction']:.0f}% padding), profiler self time in ms.",
        "",
    ]
    for kind in dict.fromkeys(result["kind"] for result in results["profiles"]):
        profiles = [result for result in results["profiles"] if result["kind"] == kind]
        totals = [sum(result["groups"].values()) for result in profiles]
        lines += [
            f"| {kind}: op group | " + " | ".join(COLUMNS[result["model"]] for result in profiles) + " |",
            "|---|" + "---|" * len(profiles),
        ]
        for group in profiles[0]["groups"]:
            cells = [
                f"{result['groups'][group]:.0f} ({100 * result['groups'][group] / total:.0f}%)"
                for result, total in zip(profiles, totals, strict=True)
            ]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines += ["| total | " + " | ".join(f"{total:.0f}" for total in totals) + " |", ""]
        for result in profiles:
            top = ", ".join(f"{op['op'].removeprefix('aten::')} {op['ms']:.0f}" for op in result["top_ops"])
            lines.append(f"- {COLUMNS[result['model']]}, {kind}, top ops (ms): {top}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
