"""Disentangled attention for DeBERTa-lite: relative positions and the attention kernels.

- Relative positions: log buckets, the (N, N) relative index shared by every layer, and the rows of the relative
  table an input can reach.
- The kernels, one signature each, chosen at run time through transformers' `AttentionInterface`.

This file is copied next to the weights with the modeling file that imports it (remote code): it imports only torch,
transformers and the configuration file.
"""

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention.flex_attention import flex_attention
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface

from .configuration_deberta_lite import DebertaLiteConfig


# ----------------------------------------------------------------------------------------------------------------
# Relative positions
# ----------------------------------------------------------------------------------------------------------------


def make_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Log-bucket signed distances: |r| <= bucket_size // 2 unchanged, larger ones compressed logarithmically.

    The float32 arithmetic is the released code's, so bucket boundaries match the pretrained checkpoints bit for bit.
    """
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid), torch.full_like(relative_pos, mid - 1), relative_pos.abs()
    )
    log_scale = torch.log(torch.tensor((max_position - 1) / mid, dtype=torch.float32))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / log_scale * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative_pos, (log_pos * sign).to(relative_pos.dtype))


def build_relative_position(
    query_size: int, key_size: int, config: DebertaLiteConfig, device: torch.device
) -> torch.LongTensor:
    """delta(i, j) = clamp(bucket(i - j) + k, 0, 2k - 1): the row of the relative table seen by query i and key j.

    Returns a (query_size, key_size) index shared by every layer, head and batch row.
    """
    span = config.att_span
    relative_pos = torch.arange(query_size, device=device)[:, None] - torch.arange(key_size, device=device)[None, :]
    if config.position_buckets > 0:
        relative_pos = make_log_bucket_position(
            relative_pos, config.position_buckets, config.effective_max_relative_positions
        )
    return torch.clamp(relative_pos + span, 0, 2 * span - 1)


def bucket_reach(config: DebertaLiteConfig) -> tuple[int, ...]:
    """reach[d]: the bucket of distance d, for d up to the distance whose bucket is the table's last row.

    Computed once per model, on the CPU, with make_log_bucket_position itself (its float32 boundaries): reachable_rows
    then reads Python integers, which torch.compile treats as constants, instead of reading a tensor back to the host
    (a graph break) on every forward.
    """
    if config.position_buckets <= 0:
        return ()
    with torch.device("cpu"):  # also when the model is built on the meta device (from_pretrained)
        distances = torch.arange(config.effective_max_relative_positions + 1)
        reach = make_log_bucket_position(distances, config.position_buckets, config.effective_max_relative_positions)
    return tuple(reach.tolist())


def reachable_rows(seq_len: int, config: DebertaLiteConfig, reach: tuple[int, ...] = ()) -> tuple[int, int]:
    """[first, last]: the rows of the relative table that a sequence of `seq_len` tokens can index.

    Short inputs never reach the outer rows (128 tokens with 256 buckets use 255 of 512), so only these rows are
    projected and multiplied; the rest would be computed and never read. `reach` is `bucket_reach(config)`.
    """
    span = config.att_span
    if not isinstance(seq_len, int):  # symbolic (torch.export / ONNX with a dynamic length): keep every row
        return 0, 2 * span - 1
    distance = seq_len - 1
    if config.position_buckets > 0:
        distance = reach[min(distance, len(reach) - 1)]
    return max(0, span - distance), min(2 * span - 1, span + distance)


def pair_attention_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """DeBERTa masks the outer product m_i·m_j: padded query rows are fully masked too, as in DebertaV2.

    (B, N) padding mask -> bool (B, 1, N, N), True = attend; None stays None.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    return keep[:, None, :, None] & keep[:, None, None, :]


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels: one signature, picked at run time by `config._attn_implementation`
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference kernel. attention_mask: bool (B, 1, Nq, Nk), True = attend; position_bias: (B, nh, Nq, Nk)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, Nq, Nk)
    if position_bias is not None:
        attn_weights = attn_weights + position_bias
    if attention_mask is not None:
        # The dtype minimum, not -inf: a fully masked (padding) row then softmaxes to a finite uniform row.
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, Nq, nh, d)
    return attn_output, attn_weights


class DisentangledBias:
    """c2p + p2c described by two (N, 2k) tables per head and the shared relative index, without an N x N tensor.

    c2p[i, j] = C2P[i, delta(i, j)] and p2c[i, j] = P2C[j, delta(i, j)], with the tables C2P = Qc·Krᵀ and
    P2C = Kc·Qrᵀ already divided by sqrt(d·s). Every kernel reads the bias through this class: `full()` materialises
    (B, nh, Nq, Nk) for kernels that take an additive bias, `rows()` builds a block of query rows for the
    memory-lean kernel, and `score_mod()` looks entries up one by one for flex attention.
    """

    def __init__(self, c2p_table: torch.Tensor | None, p2c_table: torch.Tensor | None, relative_pos: torch.LongTensor):
        self.c2p_table = c2p_table  # (B, nh, Nq, 2k)
        self.p2c_table = p2c_table  # (B, nh, Nk, 2k)
        self.relative_pos = relative_pos  # (Nq, Nk)

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Bias of query rows [start, end): (B, nh, end - start, Nk), a new tensor the caller may modify in place."""
        index = self.relative_pos[start:end]  # (q, Nk); only ever broadcast over batch and heads
        bias = None
        if self.c2p_table is not None:
            c2p_rows = self.c2p_table[:, :, start:end]
            bias = torch.gather(c2p_rows, -1, index.expand(*c2p_rows.shape[:2], *index.shape))
        if self.p2c_table is not None:
            # Gathered along P2C's rows, (Nk, q), then transposed: on CPU this is 1.7x faster than gathering a
            # transposed (2k, Nk) table along its first axis, whose reads jump between rows. The index is made
            # contiguous per block (0.4 ms at 256 x 2048) because gather reads a strided index slowly.
            index_t = index.transpose(0, 1).contiguous()  # (Nk, q)
            table = self.p2c_table
            p2c = torch.gather(table, -1, index_t.expand(*table.shape[:2], *index_t.shape)).transpose(-1, -2)
            bias = p2c.contiguous() if bias is None else bias.add_(p2c)
        return bias

    def full(self) -> torch.Tensor:
        return self.rows(0, self.relative_pos.shape[0])

    def score_mod(self, attention_mask: torch.Tensor | None, min_value: float) -> Callable:
        """flex_attention's score_mod: the score of (b, h, q, kv) plus its c2p and p2c entries, then the mask."""
        c2p_table, p2c_table, relative_pos = self.c2p_table, self.p2c_table, self.relative_pos

        def score_mod(score, b, h, q_idx, kv_idx):
            delta = relative_pos[q_idx, kv_idx]
            if c2p_table is not None:
                score = score + c2p_table[b, h, q_idx, delta]
            if p2c_table is not None:
                score = score + p2c_table[b, h, kv_idx, delta]
            if attention_mask is not None:
                score = torch.where(attention_mask[b, 0, q_idx, kv_idx], score, min_value)
            return score

        return score_mod


def chunked_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    disentangled_bias: DisentangledBias | None = None,
    attention_chunk_size: int = 256,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Memory-lean exact attention: SDPA over blocks of query rows, each with its own slice of the bias.

    Nothing of size (B, nh, N, N) exists: each block's bias is built from the (N, 2k) tables. In training every
    block is checkpointed, so its bias and scores are recomputed in the backward pass instead of kept.
    `attention_chunk_size` (a forward keyword argument) sets the rows per block.
    """
    query_len = query.shape[2]
    min_value = torch.finfo(query.dtype).min
    masked_out = None if attention_mask is None else ~attention_mask  # inverted once, not per block

    def block(query_rows: torch.Tensor, start: int, end: int) -> torch.Tensor:
        bias = disentangled_bias.rows(start, end).to(query_rows.dtype)  # (B, nh, q, Nk)
        if masked_out is not None:
            bias = bias.masked_fill_(masked_out[:, :, start:end], min_value)
        return nn.functional.scaled_dot_product_attention(
            query_rows, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
        )

    outputs = []
    for start in range(0, query_len, attention_chunk_size):
        end = min(start + attention_chunk_size, query_len)
        rows = query[:, :, start:end]
        if torch.is_grad_enabled() and (rows.requires_grad or key.requires_grad or value.requires_grad):
            outputs.append(checkpoint(block, rows, start, end, use_reentrant=False))
        else:
            outputs.append(block(rows, start, end))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (B, Nq, nh, d)


def flex_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    disentangled_bias: DisentangledBias | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`flex_attention` with a score_mod that reads c2p and p2c from the (N, 2k) tables: no N x N tensor at all.

    Meant for GPUs, where the call is compiled into one fused kernel with backward. On a CPU, torch runs it
    uncompiled (it materialises the scores) and forward only; there it is a correctness reference, not a fast path.
    It has no attention dropout.
    """
    if dropout > 0:
        raise ValueError(
            "attn_implementation='deberta_flex' has no attention dropout: set "
            "attention_probs_dropout_prob=0 or use 'sdpa'"
        )
    score_mod = disentangled_bias.score_mod(attention_mask, torch.finfo(query.dtype).min)
    flex = compiled_flex_attention() if query.is_cuda else flex_attention
    attn_output = flex(query, key, value, score_mod=score_mod, scale=scaling)
    return attn_output.transpose(1, 2).contiguous(), None  # (B, Nq, nh, d)


@functools.cache
def compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


# ----------------------------------------------------------------------------------------------------------------
# The registry, and the one place that picks a kernel
# ----------------------------------------------------------------------------------------------------------------

# Kernels that read the bias as (N, 2k) tables (the `disentangled_bias` argument); every other kernel, eager and sdpa
# included, receives it materialised as an additive `position_bias`.
TABLE_KERNELS = {"deberta_chunked": chunked_attention_forward, "deberta_flex": flex_attention_forward}
for _name, _kernel in TABLE_KERNELS.items():
    AttentionInterface.register(_name, _kernel)

# With the default "sdpa", inputs this long switch to the chunked kernel: no N x N scores, and SDPA per block.
LEAN_ATTENTION_MIN_LENGTH = 1024


def kernel_for_length(implementation: str, query_len: int) -> str:
    """The kernel that runs for `implementation` (config._attn_implementation) at this query length.

    "sdpa" hands long inputs to "deberta_chunked"; a symbolic length (torch.export, ONNX) keeps sdpa, because the
    chunked kernel loops over a concrete number of blocks. Every other choice runs as asked.
    """
    if implementation == "sdpa" and isinstance(query_len, int) and query_len >= LEAN_ATTENTION_MIN_LENGTH:
        return "deberta_chunked"
    return implementation
