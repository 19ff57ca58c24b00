"""Disentangled attention for DeBERTa-lite: relative positions and the attention kernels.

- Relative positions: log buckets, the relative index as a lookup by distance shared by every layer, the rows of the
  relative table an input can reach, and the distance beyond which every pair reads the table's first or last row.
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
from transformers.utils.import_utils import is_torchdynamo_compiling

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


def build_relative_lookup(
    query_size: int, key_size: int, config: DebertaLiteConfig, device: torch.device
) -> torch.LongTensor:
    """delta by signed distance: lookup[i - j + key_size - 1] = clamp(bucket(i - j) + k, 0, 2k - 1).

    delta(i, j), the row of the relative table that query i and key j read, depends on i - j only, so the
    (query_size + key_size - 1,) lookup describes the whole (Nq, Nk) index that every layer, head and batch row
    shares. Kernels expand the rows they need with `relative_index`: the full index is never kept (at 8192 tokens it
    is 537 MB of int64, and bucketing it directly takes several float temporaries of that size).
    """
    span = config.att_span
    distance = torch.arange(1 - key_size, query_size, device=device)
    if config.position_buckets > 0:
        distance = make_log_bucket_position(distance, config.position_buckets, config.effective_max_relative_positions)
    return torch.clamp(distance + span, 0, 2 * span - 1)


def relative_index(
    lookup: torch.LongTensor, key_size: int, query_positions: torch.LongTensor, keys: slice, keys_first: bool = False
) -> torch.LongTensor:
    """delta(i, j) for queries at `query_positions` (..., q) and the key columns `keys`: (..., q, k), or (..., k, q)
    with `keys_first`.

    `lookup` is `build_relative_lookup(query_size, key_size, ...)`. Building the transposed block directly gives the
    contiguous (k, q) index that a gather along the key axis reads fast.
    """
    columns = torch.arange(keys.start, keys.stop, device=lookup.device) - (key_size - 1)
    if keys_first:
        return lookup[query_positions.unsqueeze(-2) - columns[:, None]]
    return lookup[query_positions.unsqueeze(-1) - columns]


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


def document_ids(position_ids: torch.Tensor | None, batch_size: int) -> torch.LongTensor | None:
    """(B, N) document number of each token when `position_ids` restart at 0 inside a row (packed documents, the
    convention of transformers' DataCollatorWithFlattening); None when no row restarts.

    A token's document is the number of position-0 tokens up to it. Traced graphs (torch.compile, export) get the
    ids whenever position_ids are given: a single document then changes nothing but costs a mask.
    """
    if position_ids is None:
        return None
    if not is_torchdynamo_compiling() and not bool((position_ids[..., 1:] == 0).any()):
        return None
    return torch.cumsum(position_ids == 0, dim=-1).expand(batch_size, -1)


def pair_attention_mask(
    attention_mask: torch.Tensor | None, documents: torch.LongTensor | None = None
) -> torch.Tensor | None:
    """DeBERTa masks the outer product m_i·m_j: padded query rows are fully masked too, as in DebertaV2. Tokens of
    different documents (`document_ids`) do not attend to each other.

    (B, N) padding mask -> bool (B, 1, N, N), True = attend; None when there is neither a mask nor documents.
    """
    if attention_mask is None and documents is None:
        return None
    keep = attention_mask.bool() if attention_mask is not None else torch.ones_like(documents, dtype=torch.bool)
    pair = keep[:, None, :, None] & keep[:, None, None, :]
    if documents is not None:
        pair = pair & (documents[:, None, :, None] == documents[:, None, None, :])
    return pair


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
    """c2p + p2c described by two (N, 2k) tables per head and the relative lookup, without an N x N tensor.

    c2p[i, j] = C2P[i, delta(i, j)] and p2c[i, j] = P2C[j, delta(i, j)], with the tables C2P = Qc·Krᵀ and
    P2C = Kc·Qrᵀ already divided by sqrt(d·s). Every kernel reads the bias through this class: `full()` materialises
    (B, nh, Nq, Nk) for kernels that take an additive bias, `block()` builds a block of it for the memory-lean
    kernel, and `score_mod()` looks entries up one by one for flex attention.
    """

    def __init__(
        self,
        c2p_table: torch.Tensor | None,
        p2c_table: torch.Tensor | None,
        relative_lookup: torch.LongTensor,
        query_positions: torch.LongTensor,
        key_size: int,
        far_distance: int,
    ):
        self.c2p_table = c2p_table  # (B, nh, Nq, rows)
        self.p2c_table = p2c_table  # (B, nh, Nk, rows)
        self.relative_lookup = relative_lookup  # see build_relative_lookup
        # (Nq,) = arange(Nq) for self-attention; (B, Nq) for queries at chosen positions (the masked-only decoder).
        self.query_positions = query_positions
        self.key_size = key_size
        # From this distance on, every query-key pair reads the first or the last row of the tables.
        self.far_distance = far_distance

    def block(self, queries: slice, keys: slice) -> torch.Tensor:
        """Bias of a block of query rows and key columns: (B, nh, q, k), a new tensor the caller may modify in place."""
        positions = self.query_positions[..., queries]
        bias = None
        if self.c2p_table is not None:
            index = relative_index(self.relative_lookup, self.key_size, positions, keys)  # ([B,] q, k)
            c2p_rows = self.c2p_table[:, :, queries]
            bias = torch.gather(c2p_rows, -1, per_head(index).expand(*c2p_rows.shape[:2], *index.shape[-2:]))
        if self.p2c_table is not None:
            # Gathered along P2C's rows, (k, q), then transposed: on CPU this is 1.7x faster than gathering a
            # transposed (2k, Nk) table along its first axis, whose reads jump between rows.
            index_t = relative_index(self.relative_lookup, self.key_size, positions, keys, keys_first=True)
            table = self.p2c_table[:, :, keys]
            index_t = per_head(index_t).expand(*table.shape[:2], *index_t.shape[-2:])  # (B, nh, k, q)
            p2c = torch.gather(table, -1, index_t).transpose(-1, -2)
            bias = p2c.contiguous() if bias is None else bias.add_(p2c)
        return bias

    def reads_every_row_once(self) -> bool:
        """Whether the tables have one row per distance (2N - 1 of them, read in order): short self-attention, where
        no two distances share a bucket. delta(i, j) is then i - j + N - 1 itself, and the bias is the tables read
        along shifted diagonals, without an index."""
        tables = [table for table in (self.c2p_table, self.p2c_table) if table is not None]
        return (
            not is_torchdynamo_compiling()
            and self.query_positions.dim() == 1
            and self.query_positions.shape[0] == self.key_size
            and all(table.shape[-1] == self.relative_lookup.shape[0] and table.stride(-1) == 1 for table in tables)
        )

    def shifted(self) -> torch.Tensor:
        """`full()` for tables with one row per distance: c2p[i, j] = C2P[i, i - j + N - 1] is the column-reversed
        table read at column j - i + N - 1, and p2c[i, j] = P2C[j, i - j + N - 1] is P2C read at column i - j + N - 1,
        transposed. Both are strided views (the reversal costs one copy of the table): 2 to 3 times faster than
        gathering through the index on a CPU."""

        def diagonals(table: torch.Tensor) -> torch.Tensor:  # (B, nh, N, 2N - 1) -> (B, nh, N, N): [i, j - i + N - 1]
            size = table.shape[-2]
            return table.as_strided(
                (*table.shape[:-1], size),
                (*table.stride()[:-2], table.stride(-2) - 1, 1),
                table.storage_offset() + size - 1,
            )

        terms = []
        if self.c2p_table is not None:
            terms.append(diagonals(self.c2p_table.flip(-1)))
        if self.p2c_table is not None:
            terms.append(diagonals(self.p2c_table).transpose(-1, -2))
        bias = terms[0].clone(memory_format=torch.contiguous_format)  # a new tensor: callers write the mask into it
        return bias.add_(terms[1]) if len(terms) == 2 else bias

    def full(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, nh, Nq, Nk); with a bool `attention_mask` (True = attend), masked entries hold the dtype minimum,
        written in place: the mask costs no second (B, nh, Nq, Nk) tensor."""
        if self.reads_every_row_once():
            bias = self.shifted()
        else:
            bias = self.block(slice(0, self.query_positions.shape[-1]), slice(0, self.key_size))
        if attention_mask is not None:
            bias = bias.masked_fill_(~attention_mask, torch.finfo(bias.dtype).min)
        return bias

    def far_columns(self) -> tuple[torch.Tensor | None, ...]:
        """The far field's per-query and per-key scalars, (B, nh, N, 1) each: beyond `far_distance` the score of
        query i and key j is q_i·k_j + c_i + p_j, with (c, p) = (C2P[:, last], P2C[:, last]) for keys on the
        left (i - j large) and (C2P[:, first], P2C[:, first]) for keys on the right. None for an absent term."""
        left, right = self.relative_lookup[-1:], self.relative_lookup[:1]  # delta at i - j = Nq - 1 and 1 - Nk
        columns = []
        for table in (self.c2p_table, self.p2c_table):
            columns += [None, None] if table is None else [table.index_select(-1, left), table.index_select(-1, right)]
        return tuple(columns)  # c_left, c_right, p_left, p_right

    def score_mod(self, attention_mask: torch.Tensor | None, min_value: float) -> Callable:
        """flex_attention's score_mod: the score of (b, h, q, kv) plus its c2p and p2c entries, then the mask."""
        c2p_table, p2c_table, lookup = self.c2p_table, self.p2c_table, self.relative_lookup
        offset = self.key_size - 1

        def score_mod(score, b, h, q_idx, kv_idx):
            delta = lookup[q_idx - kv_idx + offset]
            if c2p_table is not None:
                score = score + c2p_table[b, h, q_idx, delta]
            if p2c_table is not None:
                score = score + p2c_table[b, h, kv_idx, delta]
            if attention_mask is not None:
                score = torch.where(attention_mask[b, 0, q_idx, kv_idx], score, min_value)
            return score

        return score_mod


def per_head(index: torch.LongTensor) -> torch.LongTensor:
    """An index shared by every batch row (q, k) or one per row (B, q, k), viewed so it broadcasts over heads."""
    return index.unsqueeze(1) if index.dim() == 3 else index


def far_field_distance(config: DebertaLiteConfig) -> int:
    """The distance from which every query-key pair reads the first or the last row of the relative table.

    delta is monotone in i - j and clamped, so past the first distance that reaches the last row (and, on the other
    side, the first row) nothing changes. 511 for DeBERTa-v3 (256 log buckets over 512 positions), k without buckets.
    """
    with torch.device("cpu"):  # also when the model is built on the meta device (from_pretrained)
        reach = 2 * max(config.att_span, config.effective_max_relative_positions) + 2
        lookup = build_relative_lookup(reach, reach, config, torch.device("cpu"))  # distance r at lookup[r + reach - 1]
        last, first = int(lookup[-1]), int(lookup[0])
        left = int((lookup[reach - 1 :] != last).sum())  # distances 0, 1, ... before the last row is reached
        right = int((lookup[: reach - 1].flip(0) != first).sum()) + 1  # distances 1, 2, ...
    return max(left, right)


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
    block is checkpointed, so its bias and scores are recomputed in the backward pass instead of kept. Without
    gradients, inputs longer than the relative table's reach take the far field (`FarField`) for the keys beyond it.
    `attention_chunk_size` (a forward keyword argument) sets the rows per block.
    """
    query_len, key_len = query.shape[2], key.shape[2]
    min_value = torch.finfo(query.dtype).min
    masked_out = None if attention_mask is None else ~attention_mask  # inverted once, not per block
    training = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    far_field = None
    if not training and dropout == 0 and key_len > disentangled_bias.far_distance + attention_chunk_size - 1:
        far_field = FarField(query, key, value, attention_mask, scaling, disentangled_bias)

    def block(query_rows: torch.Tensor, start: int, end: int) -> torch.Tensor:
        bias = disentangled_bias.block(slice(start, end), slice(0, key_len)).to(query_rows.dtype)  # (B, nh, q, Nk)
        if masked_out is not None:
            bias = bias.masked_fill_(masked_out[:, :, start:end], min_value)
        return nn.functional.scaled_dot_product_attention(
            query_rows, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
        )

    outputs = []
    for start in range(0, query_len, attention_chunk_size):
        end = min(start + attention_chunk_size, query_len)
        rows = query[:, :, start:end]
        if far_field is not None:
            outputs.append(far_field.block(start, end))
        elif training:
            outputs.append(checkpoint(block, rows, start, end, use_reentrant=False))
        else:
            outputs.append(block(rows, start, end))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None  # (B, Nq, nh, d)


class FarField:
    """Exact attention for long inputs at close to plain attention's cost, without gradients.

    For keys at least `far_distance` away, delta is the first or the last row of the tables, so the score is
    q_i·k_j·s + c_i + p_j: a plain dot product once Q gets the columns [c, 1] and K the columns [1, p], one pair for
    the keys on the left and one for the keys on the right. A block of query rows then runs three softmax parts: the
    band of keys within reach with the explicit bias, and the far keys on each side through a plain fused kernel on
    the extended Q and K. The parts merge exactly through their log-sum-exp.
    """

    def __init__(self, query, key, value, attention_mask, scaling: float, disentangled_bias: DisentangledBias):
        self.query, self.key, self.value, self.scaling = query, key, value, scaling
        self.bias = disentangled_bias
        self.min_value = torch.finfo(query.dtype).min
        self.masked_out = None if attention_mask is None else ~attention_mask
        head_dim = query.shape[-1]
        c_left, c_right, p_left, p_right = disentangled_bias.far_columns()
        # Fused CPU kernels run whole SIMD vectors: Q, K and V are padded with zero columns to a multiple of 8.
        width = head_dim + (c_left is not None) + (p_left is not None)
        width += -width % 8

        def extend(base: torch.Tensor, *columns: torch.Tensor | None) -> torch.Tensor:
            parts = [base] + [column.to(base.dtype) for column in columns if column is not None]
            padding = width - sum(part.shape[-1] for part in parts)
            return torch.cat([*parts, base.new_zeros(*base.shape[:-1], padding)], dim=-1)

        scaled = query * scaling
        query_ones = query.new_ones(*query.shape[:-1], 1) if p_left is not None else None
        key_ones = key.new_ones(*key.shape[:-1], 1) if c_left is not None else None
        self.query_left, self.query_right = extend(scaled, c_left, query_ones), extend(scaled, c_right, query_ones)
        self.key_left, self.key_right = extend(key, key_ones, p_left), extend(key, key_ones, p_right)
        self.value_extended = extend(value)
        self.head_dim = head_dim
        if attention_mask is not None:
            # A real query's row of DeBERTa's pair mask is the key mask; padded queries (whole row masked) are set
            # afterwards to what a fully masked softmax gives: the mean of every value.
            self.key_bias = torch.zeros(
                attention_mask.shape[0], 1, 1, key.shape[2], dtype=query.dtype, device=query.device
            )
            self.key_bias.masked_fill_(~attention_mask.any(dim=-2, keepdim=True), self.min_value)
            self.query_kept = attention_mask.any(dim=-1, keepdim=True)  # (B, 1, Nq, 1)
            self.value_mean = value.mean(dim=-2, keepdim=True)

    def block(self, start: int, end: int) -> torch.Tensor:
        """Output of query rows [start, end): (B, nh, q, d)."""
        key_len, reach = self.key.shape[2], self.bias.far_distance
        low, high = max(0, start - reach + 1), min(key_len, end - 1 + reach)  # keys outside [low, high) are far
        rows, band = slice(start, end), slice(low, high)
        bias = self.bias.block(rows, band).to(self.query.dtype)
        if self.masked_out is not None:
            bias = bias.masked_fill_(self.masked_out[:, :, rows, band], self.min_value)
        parts = [
            attention_with_lse(self.query[:, :, rows], self.key[:, :, band], self.value[:, :, band], bias, self.scaling)
        ]
        for far, query, key in (
            (slice(0, low), self.query_left, self.key_left),
            (slice(high, key_len), self.query_right, self.key_right),
        ):
            if far.stop > far.start:
                key_bias = None if self.masked_out is None else self.key_bias[..., far]
                output, lse = attention_with_lse(
                    query[:, :, rows], key[:, :, far], self.value_extended[:, :, far], key_bias, 1.0
                )
                parts.append((output[..., : self.head_dim], lse))
        lse = torch.logsumexp(torch.stack([part_lse for _, part_lse in parts]), dim=0)
        output = sum(part * torch.exp(part_lse - lse).unsqueeze(-1) for part, part_lse in parts).to(self.query.dtype)
        if self.masked_out is not None:
            output = torch.where(self.query_kept[:, :, rows], output, self.value_mean)
        return output


# torch's fused CPU attention that also returns the log-sum-exp: a private aten op (public SDPA calls it on CPUs),
# looked up once so that a torch release without it falls back to explicit scores.
CPU_FLASH_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (B, nh, q, d) and the fp32 log-sum-exp of each row's scores (B, nh, q), to merge partial
    softmaxes. Fused on a CPU; elsewhere the same numbers come from explicit scores."""
    if query.device.type == "cpu" and CPU_FLASH_WITH_LSE is not None:
        output, lse = CPU_FLASH_WITH_LSE(query, key, value, attn_mask=bias, scale=scale)
        return output, lse.float()
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse.unsqueeze(-1)).to(value.dtype), value), lse


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


# ----------------------------------------------------------------------------------------------------------------
# Unpadded batches
# ----------------------------------------------------------------------------------------------------------------

# With `unpad_batches=None`, a batch is unpadded when at least this fraction of its positions is padding. Measured
# (base size, 4 layers, 32 rows of 128 tokens, 2 CPU threads): unpadded takes 0.89 of the padded time at 5% padding,
# 0.73 at 20%, 0.43 at 50%; below about 3% the two are within noise.
UNPAD_MIN_PADDING = 0.05
# Sequences of similar lengths attend together as one small padded batch (`group_sequences`). Padding inside a group
# soon costs more than the calls it saves. Measured on 3 batches of 32 bundled sentiment texts (base size, 2 CPU
# threads), forward: 3.60 s grouping equal lengths only, 3.50 s with these settings, 3.72 s with 0.3 and 16 tokens,
# 3.94 s with 0.5 and 32, 4.96 s as a single group; training steps 13.0 s, 13.1 s and 13.9 s for the first three.
GROUP_SLACK = 0.15
GROUP_SLACK_TOKENS = 8


class SequenceGroup:
    """Sequences of a packed batch that attend as one padded batch of `count` rows of `length` tokens.

    `index` (count * length,) is the packed token at each position (a shorter sequence repeats its first token there,
    masked out), `keep` marks the real positions, `mask` is their bool (count, 1, length, length) pair mask, or None
    when every sequence has the group's length. `relative_lookup` is the lookup of a sequence of this length, shifted
    onto the relative table's `rows` it reaches: short groups multiply only those rows.
    """

    def __init__(self, sequences: list[tuple[int, int]], relative_lookup: list[int], device: torch.device):
        self.count, self.length = len(sequences), max(size for _, size in sequences)
        positions = torch.arange(self.length, device=device)
        starts = torch.tensor([start for start, _ in sequences], device=device)[:, None]
        sizes = torch.tensor([size for _, size in sequences], device=device)[:, None]
        keep = positions < sizes  # (count, length)
        self.index = torch.where(keep, starts + positions, starts).flatten()
        self.keep = keep.flatten()
        self.mask = None if bool(keep.all()) else pair_attention_mask(keep)
        middle = (len(relative_lookup) - 1) // 2  # distance 0
        window = relative_lookup[middle - self.length + 1 : middle + self.length]  # monotone in the distance
        self.rows = slice(window[0], window[-1] + 1)
        self.relative_lookup = torch.tensor(window, device=device) - window[0]


def group_sequences(sequences: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Sequences (start, length) in groups of similar lengths, longest first: a sequence joins the current group when
    padding it to the group's length adds at most GROUP_SLACK of that length, or GROUP_SLACK_TOKENS tokens."""
    groups = []
    for sequence in sorted(sequences, key=lambda sequence: -sequence[1]):
        if groups:
            length = groups[-1][0][1]
            if length - sequence[1] <= max(GROUP_SLACK * length, GROUP_SLACK_TOKENS):
                groups[-1].append(sequence)
                continue
        groups.append([sequence])
    return groups


class UnpaddedBatch:
    """A padded batch laid out as one packed sequence of its real tokens, plus one stand-in per padded row.

    DeBERTa's padded rows are not idle: a padded query has every key masked, so it attends uniformly to all N
    positions of its row, and a left-padded row's first token (the one the pooler reads) is such a query. All padded
    positions of a row start from the same zero embedding and see the same keys, so they stay equal in every layer:
    one stand-in token per row carries them, attending to the row's real values and, N - L times, to its own value.
    So the packed layout computes exactly what the padded one does, on L + 1 tokens per row instead of N.

    Packed order: row 0's real tokens, row 0's stand-in (if the row has padding), row 1's real tokens, ... A row's
    real tokens attend to each other as one sequence, or per document with `documents` (`document_ids`). Only rows
    whose real tokens are one contiguous run (left or right padding) can be packed. Sequences of similar lengths
    attend together (`SequenceGroup`), each group taking its part of `relative_lookup`, the padded length's
    (`build_relative_lookup`).
    """

    def __init__(
        self, attention_mask: torch.Tensor | None, documents: torch.LongTensor | None, relative_lookup: torch.LongTensor
    ):
        self.batch_size, self.seq_len = (attention_mask if attention_mask is not None else documents).shape
        device = relative_lookup.device
        keep = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones(self.batch_size, self.seq_len, dtype=torch.bool, device=device)
        )
        lengths = keep.sum(dim=-1)
        has_stand_in = lengths < self.seq_len
        sizes = lengths + has_stand_in.long()
        offsets = torch.cumsum(sizes, dim=0) - sizes  # packed position of each row's first token
        self.num_tokens = int(sizes.sum())
        # Every sequence as (packed start, length): a row's real tokens, or each document's run of them.
        sequences = []
        for row, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
            runs = (
                [length]
                if documents is None or not length
                else documents[row][keep[row]].unique_consecutive(return_counts=True)[1].tolist()
            )
            starts = [offset + sum(runs[:index]) for index in range(len(runs))]
            sequences += [(start, size) for start, size in zip(starts, runs, strict=True) if size]
        lookup = relative_lookup.tolist()
        self.groups = [SequenceGroup(group, lookup, device) for group in group_sequences(sequences)]
        group_index = torch.cat([group.index for group in self.groups]) if self.groups else offsets[:0]
        self.group_index, self.group_sizes = group_index, [group.index.numel() for group in self.groups]
        # A stand-in's attention output is the mean of its padded row's values, N - L of them its own: one
        # (stand-ins, tokens) matrix of weights for all of them.
        stand_in_rows = has_stand_in.nonzero().flatten()
        stand_ins = (offsets + lengths)[stand_in_rows]  # their packed positions
        token_rows = torch.repeat_interleave(torch.arange(self.batch_size, device=device), sizes)  # (tokens,)
        weights = (token_rows == stand_in_rows[:, None]).float()
        weights[torch.arange(len(stand_ins), device=device), stand_ins] = (
            self.seq_len - lengths[stand_in_rows]
        ).float()
        self.stand_in_weights = weights / self.seq_len if len(stand_ins) else None
        # Where each packed token's attention output lies among the groups' outputs laid end to end, then the
        # stand-ins'.
        keep_in_groups = torch.cat([group.keep for group in self.groups]) if self.groups else keep.new_zeros(0)
        self.output_index = torch.empty(self.num_tokens, dtype=torch.long, device=device)
        self.output_index[group_index[keep_in_groups]] = keep_in_groups.nonzero().flatten()
        self.output_index[stand_ins] = group_index.numel() + torch.arange(len(stand_ins), device=device)
        # The packed token that holds each padded-batch position: a real token (offset + its rank among the row's
        # real tokens) or the row's stand-in (offset + length).
        rank = torch.cumsum(keep.long(), dim=-1) - 1
        packed = torch.where(keep, offsets[:, None] + rank, (offsets + lengths)[:, None]).flatten()  # (B * N,)
        self.scatter_index = packed
        # And back: a padded-batch position for each packed token. A stand-in may take any of its row's padded
        # positions: the embeddings zero them all.
        self.gather_index = torch.empty(self.num_tokens, dtype=torch.long, device=device)
        self.gather_index[packed] = torch.arange(packed.shape[0], device=device)

    @staticmethod
    def applies(
        attention_mask: torch.Tensor | None, documents: torch.LongTensor | None, unpad_batches: bool | None
    ) -> bool:
        """Whether to unpad: unpadding is not turned off, real tokens form one contiguous run per row, and the batch
        has packed documents, or padding with unpadding forced on or at least UNPAD_MIN_PADDING of it."""
        if unpad_batches is False or (attention_mask is None and documents is None):
            return False
        if attention_mask is None:
            return True
        keep = attention_mask.bool()
        padding = 1 - float(keep.float().mean())
        if documents is None and (padding == 0 or (unpad_batches is None and padding < UNPAD_MIN_PADDING)):
            return False
        # One run of real tokens per row: at most one 0 -> 1 step, counting a real first token as one.
        steps = (keep[:, 1:] & ~keep[:, :-1]).sum(dim=-1) + keep[:, 0]
        return bool((steps <= 1).all())

    def unpad(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, N, H) -> (1, num_tokens, H)."""
        return hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, self.gather_index).unsqueeze(0)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(1, num_tokens, H) -> (B, N, H); padded positions get their row's stand-in."""
        return packed[0].index_select(0, self.scatter_index).view(self.batch_size, self.seq_len, -1)


def unpadded_attention(
    attend: Callable,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    relative_projections: tuple[torch.Tensor | None, torch.Tensor | None],
    batch: UnpaddedBatch,
    **kwargs,
) -> torch.Tensor:
    """Attention over a packed batch of projected queries, keys and values (1, tokens, H): each group of sequences
    runs as a padded batch through `attend` (the attention module's, with the kernel its length picks); a stand-in
    takes the mean of its padded row's values. Returns (1, tokens, H).

    One gather and one split per input: autograd then scatters each gradient back once, where slicing every
    sequence out of the packed tensor would add a full-size zero tensor per sequence in the backward pass. Gathers
    are index_select, whose backward is an index_add (advanced indexing's sorts the indices first).
    """
    outputs = []
    if batch.groups:
        grouped = [
            torch.split(states[0].index_select(0, batch.group_index), batch.group_sizes)
            for states in (query, key, value)
        ]
        for group, group_query, group_key, group_value in zip(batch.groups, *grouped, strict=True):
            shape = (group.count, group.length, -1)
            rows = tuple(None if table is None else table[group.rows] for table in relative_projections)
            output, _ = attend(
                group_query.view(shape),
                group_key.view(shape),
                group_value.view(shape),
                group.mask,
                group.relative_lookup,
                rows,
                **kwargs,
            )
            outputs.append(output.flatten(0, 1))
    if batch.stand_in_weights is not None:
        outputs.append(batch.stand_in_weights.to(value.dtype) @ value[0])
    return torch.cat(outputs).index_select(0, batch.output_index).unsqueeze(0)
