"""PyTorch DeBERTa-lite: a DeBERTa-v2/v3 encoder with disentangled attention in every layer.

Numerically the same model as transformers' DebertaV2 (`transformers/models/deberta_v2`), and its checkpoints load
directly. Where each piece of the math lives:

- attention.py: relative positions (log buckets, the relative index delta as a lookup by distance shared by every
  layer, the rows of the relative table an input can reach), `DisentangledBias` (c2p and p2c looked up in (N, 2k)
  tables), and the kernels: `eager` (the specification), `sdpa`, `deberta_chunked` (memory-lean, the default from
  1024 tokens; with the far field for long inputs at inference) and `deberta_flex` (flex_attention, for GPUs), all
  with one signature.
- this file, top to bottom: embeddings -> attention (projections, the C2P/P2C tables, the kernel call) -> layer
  (post-LN, the v2 convolution after the first one) -> encoder and pretrained base (DebertaV2 names renamed on load)
  -> masked LM with the enhanced mask decoder -> task heads.

How it differs from DebertaV2 in how it computes, not in what:

- Relative positions are bucketed once per forward, not once per layer, and only reachable table rows are projected.
- c2p and p2c are (N, 2k) tables per head, scaled before the lookup, and become an additive bias through a gather
  with an index built from a (2N - 1,) lookup by distance, only ever broadcast. The relative-table projections are
  not repeated over the batch. Beyond the table's reach a score is a plain dot product (the far field).
- The attention kernel is a runtime choice through transformers' `AttentionInterface`.
- The absolute position table exists only in a model that reads it: the input (`position_biased_input`) or the
  masked LM's enhanced mask decoder.
- Hidden states and attentions are captured by hooks (`capture_outputs`), not threaded through the layers.

This file is copied next to the weights by `save_pretrained` (remote code), with the files it imports relatively
(the configuration file, attention.py, internals.py); otherwise it imports only torch, transformers and
safetensors.
"""

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, has_file
from transformers.utils.generic import can_return_tuple
from transformers.utils.import_utils import is_torchdynamo_compiling
from transformers.utils.output_capturing import (
    capture_outputs,
    maybe_install_capturing_hooks,
    resolve_hidden_states_indices,
    selected_hidden_states,
)

from .attention import (
    TABLE_KERNELS,
    DisentangledBias,
    UnpaddedBatch,
    bucket_reach,
    build_relative_lookup,
    document_ids,
    eager_attention_forward,
    far_field_distance,
    kernel_for_length,
    pair_attention_mask,
    reachable_rows,
    unpadded_attention,
)
from .configuration_deberta_lite import HEADS, DebertaLiteConfig
from .internals import attention_implementation, capturing_layer_outputs, outside_output_capture


# ----------------------------------------------------------------------------------------------------------------
# Modules, leaf first
# ----------------------------------------------------------------------------------------------------------------


class InferenceCache:
    """One value computed from some tensors, reused by later inference calls while those tensors are unchanged.

    The relative table's projections depend on weights only, not on the input; a short input spends a large share
    of its time on them (a third of the work at 128 tokens, batch 1). Reuse happens only without autograd, outside
    torch.compile and not in training (the table has dropout). A parameter counts as unchanged while it is the same
    object at the same version and storage (in-place updates, `load_state_dict` and device or dtype moves all
    change one of them); an inference tensor, which cannot be modified later, by identity. Copies and pickles of a
    model start empty.
    """

    def __init__(self):
        self.entry = None  # (stamp, value), replaced as one object: threads sharing a model never see a mixed pair

    @property
    def value(self):
        return None if self.entry is None else self.entry[1]

    def get(self, sources: tuple, compute: Callable, enabled: bool):
        if not enabled or torch.is_grad_enabled() or is_torchdynamo_compiling():
            self.entry = None  # hold nothing from a pass that does not reuse
            return compute()
        stamp = tuple(
            (source, (source._version, source.data_ptr()))
            if isinstance(source, torch.Tensor) and not source.is_inference()
            else (source, None)
            for source in sources
        )
        entry = self.entry
        if entry is not None and self.unchanged(stamp, entry[0]):
            return entry[1]
        value = compute()
        self.entry = (stamp, value)
        return value

    @staticmethod
    def unchanged(stamp: tuple, cached: tuple) -> bool:
        if len(stamp) != len(cached):
            return False
        return all(
            (a is b if isinstance(a, torch.Tensor) else a == b) and u == v
            for (a, u), (b, v) in zip(stamp, cached, strict=True)
        )

    def __deepcopy__(self, memo):
        return InferenceCache()

    def __getstate__(self):
        return {"entry": None}


class DebertaLiteEmbeddings(nn.Module):
    """Word (+ absolute position when `position_biased_input`) (+ token type) -> embed_proj -> LayerNorm -> mask.

    The absolute position table exists when the input uses it or when `with_position_embeddings` asks for it: the
    enhanced mask decoder reads it even when the input does not. A table nothing reads would get no gradient, which
    DDP (find_unused_parameters=False) rejects.
    """

    def __init__(self, config: DebertaLiteConfig, with_position_embeddings: bool = False):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.embedding_size)
            if config.position_biased_input or with_position_embeddings
            else None
        )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.embedding_size) if config.type_vocab_size > 0 else None
        )
        self.embed_proj = (
            nn.Linear(config.embedding_size, config.hidden_size, bias=False)
            if config.embedding_size != config.hidden_size
            else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.LongTensor | None,
        position_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, N, E)
        if self.config.position_biased_input:
            if position_ids is None:
                position_ids = torch.arange(embeddings.shape[1], device=embeddings.device)[None, :]
            embeddings = embeddings + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.norm(embeddings)
        if attention_mask is not None:
            embeddings = embeddings * attention_mask.unsqueeze(-1).to(embeddings.dtype)
        return self.dropout(embeddings)


class DebertaLiteSublayerOutput(nn.Module):
    """dense -> dropout -> LayerNorm(residual + ·): how the attention and the feed-forward block each end (post-LN).

    The projection is called `dense` under a module called `output`, as in DebertaV2, so LoRA recipes written for
    DeBERTa (`target_modules=["query_proj", "key_proj", "value_proj", "dense"]`, or "output.dense") adapt the same
    layers here.
    """

    def __init__(self, config: DebertaLiteConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm(residual + self.dropout(self.dense(hidden_states)))


class DebertaLiteIntermediate(nn.Module):
    """The feed-forward block's first half: dense (H -> intermediate_size) -> activation."""

    def __init__(self, config: DebertaLiteConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden_states))


class DebertaLiteAttention(nn.Module):
    """Disentangled self-attention: A = (Qc·Kcᵀ + c2p + p2c) / sqrt(d·s), then LN(query + output projection).

    c2p[i, j] = Qc_i · Kr[delta(i, j)] and p2c[i, j] = Kc_j · Qr[delta(i, j)]: p2c uses the same index as c2p (the
    paper writes delta(j, i)); this is what the released checkpoints were trained with.
    """

    def __init__(self, config: DebertaLiteConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.pos_att_type = config.pos_att_type
        self.share_att_key = config.share_att_key
        # Each of c2c, c2p, p2c is divided by the same sqrt(d·s), s = number of terms.
        self.scaling = (self.head_dim * (1 + len(config.pos_att_type))) ** -0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False

        self.query_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.key_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.value_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if not config.share_att_key:  # DeBERTa v1: the relative table has projections of its own
            if "c2p" in config.pos_att_type:
                self.pos_key_proj = nn.Linear(config.hidden_size, config.hidden_size)
            if "p2c" in config.pos_att_type:
                self.pos_query_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.output = DebertaLiteSublayerOutput(config, config.hidden_size)
        self.far_distance = far_field_distance(config)
        self.relative_cache = InferenceCache()

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], self.num_heads, self.head_dim).transpose(-3, -2)  # (..., nh, N, d)

    def relative_projections(self, rel_embeddings: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Kr = P·W_kᵀ for c2p and Qr = P·W_qᵀ for p2c, (rows, H) each, already divided by sqrt(d·s); reused across
        inference calls (`InferenceCache`)."""
        key_proj = (
            None if "c2p" not in self.pos_att_type else self.key_proj if self.share_att_key else self.pos_key_proj
        )
        query_proj = (
            None if "p2c" not in self.pos_att_type else self.query_proj if self.share_att_key else self.pos_query_proj
        )

        def compute():
            table = self.pos_dropout(rel_embeddings)  # (rows, H)
            # The scale goes on the (rows, H) projections, not on the (B, nh, N, rows) products.
            return tuple(None if proj is None else proj(table) * self.scaling for proj in (key_proj, query_proj))

        weights = [tensor for proj in (key_proj, query_proj) if proj is not None for tensor in (proj.weight, proj.bias)]
        return self.relative_cache.get((rel_embeddings, *weights), compute, enabled=not self.training)

    def relative_table(self, states: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """states (B, nh, N, d) times the projected relative rows (rows, H) per head: (B, nh, N, rows).

        One product per head over all B * N rows: a batched matmul against the (nh, d, rows) projection would first
        copy it once per batch row. The result is a (B, nh, N, rows) view of (nh, B, N, rows).
        """
        batch, heads, length, head_dim = states.shape
        rows = states.transpose(0, 1).reshape(heads, batch * length, head_dim)  # a view: no copy
        table = torch.bmm(rows, self._heads(projection).transpose(-1, -2))  # (nh, B * N, rows)
        return table.view(heads, batch, length, -1).transpose(0, 1)

    def disentangled_bias(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        relative_lookup: torch.LongTensor,
        relative_projections: tuple[torch.Tensor | None, torch.Tensor | None],
        query_positions: torch.LongTensor | None = None,
    ) -> DisentangledBias:
        """The (N, 2k) tables C2P = Qc·Krᵀ and P2C = Kc·Qrᵀ, divided by sqrt(d·s) before any lookup."""
        pos_key, pos_query = relative_projections
        c2p = None if pos_key is None else self.relative_table(query, pos_key)  # (B, nh, Nq, 2k)
        p2c = None if pos_query is None else self.relative_table(key, pos_query)  # (B, nh, Nk, 2k)
        if query_positions is None:
            query_positions = torch.arange(query.shape[2], device=query.device)
        return DisentangledBias(c2p, p2c, relative_lookup, query_positions, key.shape[2], self.far_distance)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        relative_lookup: torch.LongTensor,
        rel_embeddings: torch.Tensor,
        query_states: torch.Tensor | None = None,
        query_positions: torch.LongTensor | None = None,
        unpadded: UnpaddedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys and values come from hidden_states; the query (and the residual) may differ: the enhanced mask
        decoder's, (B, N, H), or only at chosen positions, (B, M, H) with `query_positions` (B, M). With `unpadded`,
        hidden_states is a packed batch (1, tokens, H) and each of its sequences attends within itself."""
        query_states = hidden_states if query_states is None else query_states
        query = self.query_proj(query_states)
        key = self.key_proj(hidden_states)
        value = self.value_proj(hidden_states)
        relative_projections = self.relative_projections(rel_embeddings)
        if unpadded is not None:
            attn_output = unpadded_attention(self.attend, query, key, value, relative_projections, unpadded, **kwargs)
            return self.output(attn_output, residual=query_states), None
        attn_output, attn_weights = self.attend(
            query, key, value, attention_mask, relative_lookup, relative_projections, query_positions, **kwargs
        )
        return self.output(attn_output, residual=query_states), attn_weights

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        relative_lookup: torch.LongTensor,
        relative_projections: tuple[torch.Tensor | None, torch.Tensor | None],
        query_positions: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected queries (B, Nq, H) attend to projected keys and values (B, Nk, H) through the kernel their
        length picks; returns (B, Nq, H) and the attention weights where the kernel gives them."""
        output_shape = query.shape
        query, key, value = self._heads(query), self._heads(key), self._heads(value)  # (B, nh, N, d)
        bias = self.disentangled_bias(query, key, relative_lookup, relative_projections, query_positions)
        implementation = kernel_for_length(attention_implementation(self.config), query.shape[2])
        if query_positions is not None and implementation in TABLE_KERNELS:
            # The table kernels walk runs of consecutive query rows; a few scattered queries need no lean kernel.
            implementation = "sdpa"
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if implementation in TABLE_KERNELS:
            kwargs["disentangled_bias"] = bias
        elif implementation == "sdpa":  # the mask goes into the bias in place: one (B, nh, N, N) tensor, not two
            kwargs["position_bias"] = bias.full(attention_mask)
            attention_mask = None
        else:
            kwargs["position_bias"] = bias.full()
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
            **kwargs,
        )
        return attn_output.reshape(output_shape), attn_weights


class DebertaLiteConvLayer(nn.Module):
    """DeBERTa-v2's convolution after the first layer: LN(layer_out + act(dropout(conv1d(layer_in)))), pads zeroed."""

    def __init__(self, config: DebertaLiteConfig):
        super().__init__()
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            config.conv_kernel_size,
            padding=(config.conv_kernel_size - 1) // 2,
            groups=config.conv_groups,
        )
        self.act = ACT2FN[config.conv_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, layer_input: torch.Tensor, layer_output: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        out = self.conv(layer_input.transpose(1, 2)).transpose(1, 2)  # (B, N, H)
        keep = None if padding_mask is None else padding_mask.unsqueeze(-1).to(out.dtype)  # (B, N, 1)
        if keep is not None:
            out = out * keep
        output = self.norm(layer_output + self.act(self.dropout(out)))
        return output if keep is None else output * keep


class DebertaLiteLayer(GradientCheckpointingLayer):
    """Post-LN block: LN(query + attention) -> LN(x + FFN(x)); the first layer may add the v2 convolution."""

    def __init__(self, config: DebertaLiteConfig, layer_idx: int):
        super().__init__()
        self.attention = DebertaLiteAttention(config, layer_idx)
        self.intermediate = DebertaLiteIntermediate(config)
        self.output = DebertaLiteSublayerOutput(config, config.intermediate_size)
        self.conv = DebertaLiteConvLayer(config) if layer_idx == 0 and config.conv_kernel_size > 0 else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        relative_lookup: torch.LongTensor,
        rel_embeddings: torch.Tensor,
        query_states: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        query_positions: torch.LongTensor | None = None,
        unpadded: UnpaddedBatch | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """`query_states` (the EMD's queries) comes positionally: reentrant checkpointing only replays positional
        tensors, and a query passed by keyword would be backpropagated through twice."""
        attn_output, _ = self.attention(
            hidden_states,
            attention_mask,
            relative_lookup,
            rel_embeddings,
            query_states,
            query_positions,
            unpadded,
            **kwargs,
        )
        layer_output = self.output(self.intermediate(attn_output), residual=attn_output)
        # The EMD's query passes reuse the block but not the convolution, which the original applies in its encoder
        # loop after the first layer only.
        if self.conv is not None and query_states is None:
            layer_output = self.conv(hidden_states, layer_output, padding_mask)
        return layer_output


def unreadable_weights(pretrained_model_name_or_path) -> str:
    """The safetensors file of a local checkpoint that fails to open, else the checkpoint's name."""
    directory = Path(str(pretrained_model_name_or_path))
    for path in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except SafetensorError:
            return str(path)
    return f"a weights file of {pretrained_model_name_or_path}"


SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def pickle_only_weights(pretrained_model_name_or_path, revision: str | None = None, token=None) -> list[str]:
    """The pickled weight files of a checkpoint (a directory or a Hub repository) that has no safetensors weights."""
    directory = Path(str(pretrained_model_name_or_path))
    if directory.is_dir():
        if any(directory.glob("*.safetensors")):
            return []
        return sorted(path.name for path in directory.glob("*.bin"))
    repository = str(pretrained_model_name_or_path)
    try:
        if any(has_file(repository, name, revision=revision, token=token) for name in SAFETENSORS_WEIGHTS):
            return []
        return [name for name in PICKLED_WEIGHTS if has_file(repository, name, revision=revision, token=token)]
    except Exception:  # offline, unreachable, or no such repository: transformers' own error says which
        return []


# ----------------------------------------------------------------------------------------------------------------
# Pretrained base and the encoder
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints of transformers' DebertaV2 (and of the original DeBERTa code) load directly
# ----------------------------------------------------------------------------------------------------------------

# (checkpoint name, DeBERTa-lite name) regular expressions, applied in turn to every key `from_pretrained` reads.
# Keys saved by DeBERTa-lite match none of them. The configuration file translates a "deberta-v2" config.
DEBERTA_V2_KEY_RENAMES = [
    ("encoder.layer.", "layers."),
    ("attention.self.", "attention."),
    ("encoder.conv.", "layers.0.conv."),
    ("encoder.rel_embeddings.", "rel_embeddings."),
    ("encoder.LayerNorm.", "rel_norm."),
    # The masked-LM head: original DeBERTa names (DebertaV2ForMaskedLM with legacy=False), then transformers' legacy
    # BERT-style names, whose decoder weight is the tied word embedding.
    ("lm_predictions.lm_head.bias", "lm_head.decoder.bias"),
    ("lm_predictions.lm_head.", "lm_head."),
    ("cls.predictions.transform.", "lm_head."),
    ("cls.predictions.bias", "lm_head.decoder.bias"),
    ("cls.predictions.decoder.", "lm_head.decoder."),
    ("LayerNorm.", "norm."),
]
# Names written by DeBERTa-lite 0.1, before the attention and feed-forward outputs took DebertaV2's `output.dense`.
DEBERTA_LITE_0_1_KEY_RENAMES = [
    ("attention.out_proj.", "attention.output.dense."),
    ("attention_norm.", "attention.output.norm."),
    ("output_norm.", "output.norm."),
    ("intermediate.weight", "intermediate.dense.weight"),
    ("intermediate.bias", "intermediate.dense.bias"),
    ("output.weight", "output.dense.weight"),
    ("output.bias", "output.dense.bias"),
]
register_checkpoint_conversion_mapping(
    DebertaLiteConfig.model_type,
    [WeightRenaming(source, target) for source, target in DEBERTA_V2_KEY_RENAMES + DEBERTA_LITE_0_1_KEY_RENAMES],
    overwrite=True,  # this file may be imported twice: as the package and as remote code
)


class DebertaLitePreTrainedModel(PreTrainedModel):
    config: DebertaLiteConfig
    config_class = DebertaLiteConfig
    base_model_prefix = "deberta"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DebertaLiteEmbeddings", "DebertaLiteLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # Our losses are means over the batch: Trainer must scale them for gradient accumulation itself. (It would not,
    # seeing **kwargs in forward, if this were True.) The MLM head overrides it and honours num_items_in_batch.
    accepts_loss_kwargs = False
    _can_record_outputs = {"hidden_states": DebertaLiteLayer, "attentions": DebertaLiteAttention}
    # Only the masked LM's enhanced mask decoder reads the absolute position table of a v2/v3 checkpoint, and only
    # the replaced-token-detection class reads the discriminator head of a v3 one: other heads skip them quietly.
    _keys_to_ignore_on_load_unexpected = [r"embeddings\.position_embeddings\.weight", r"^mask_predictions\."]

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """transformers' `save_pretrained`, writing DeBERTa-lite's own weight names by default.

        transformers would otherwise apply the DebertaV2 renames above in reverse, and Trainer, which resumes by
        reading the saved weights without renaming them, could not resume its own checkpoints.
        """
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained` with two safeguards.

        - Weights load from safetensors only. Pickled weights (`pytorch_model.bin`) can run code when unpickled; they
          load only with an explicit `use_safetensors=False`, and then through `torch.load(weights_only=True)`.
        - A truncated or corrupted safetensors file is named in the error (safetensors' own message names none).
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"{unreadable_weights(pretrained_model_name_or_path)} cannot be read ({error}): the file "
                "is truncated or corrupted; save or download it again"
            ) from error
        except OSError as error:
            if not kwargs["use_safetensors"]:
                raise
            pickled = pickle_only_weights(pretrained_model_name_or_path, kwargs.get("revision"), kwargs.get("token"))
            if not pickled:
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} holds pickled weights ({', '.join(pickled)}) and no safetensors. "
                "Unpickling can run code: pass use_safetensors=False to load them anyway (with "
                "torch.load(weights_only=True)), then save_pretrained() them as safetensors"
            ) from error


class DebertaLiteModel(DebertaLitePreTrainedModel):
    """The encoder. `with_position_embeddings=True` keeps the absolute position table even when the input does not
    use it, for a head that reads it (the masked LM's enhanced mask decoder)."""

    def __init__(self, config: DebertaLiteConfig, with_position_embeddings: bool = False):
        super().__init__(config)
        self.embeddings = DebertaLiteEmbeddings(config, with_position_embeddings)
        self.layers = nn.ModuleList([DebertaLiteLayer(config, i) for i in range(config.num_hidden_layers)])
        # One relative-position table P (2k rows) shared by all layers; each layer projects it with its own weights.
        self.rel_embeddings = nn.Embedding(2 * config.att_span, config.hidden_size)
        self.rel_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_rel_ebd == "layer_norm" else None
        )
        self.relative_reach = bucket_reach(config)
        self.relative_table_cache = InferenceCache()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.word_embeddings = value

    def relative_inputs(self, seq_len: int, device: torch.device) -> tuple[torch.LongTensor, torch.Tensor]:
        """The relative lookup (2N - 1,) and the rows of the relative table it can reach, the lookup shifted onto them.

        The table is normalised once per forward (v2/v3), here, not per layer.
        """
        first, last = reachable_rows(seq_len, self.config, self.relative_reach)
        relative_lookup = build_relative_lookup(seq_len, seq_len, self.config, device) - first

        def table() -> torch.Tensor:
            rows = self.rel_embeddings.weight[first : last + 1]  # (rows, H)
            return rows if self.rel_norm is None else self.rel_norm(rows)

        # The same table object while nothing changed, so that every layer can reuse its projections of it.
        sources = (self.rel_embeddings.weight, first, last)
        if self.rel_norm is not None:
            sources += (self.rel_norm.weight, self.rel_norm.bias)
        return relative_lookup, self.relative_table_cache.get(sources, table, enabled=not self.training)

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids):
        """Clear errors for bad input, before an index error deep inside an embedding or a gather."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            name, shape = "input_ids", tuple(input_ids.shape)
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, sequence), got {shape}")
        else:
            name, shape = "inputs_embeds", tuple(inputs_embeds.shape[:-1])
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.embedding_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, sequence, embedding_size={self.config.embedding_size}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
        for other_name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if other is not None and tuple(other.shape) != shape:
                raise ValueError(f"{other_name} has shape {tuple(other.shape)} but {name} has shape {shape}")
        if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[-1] != shape[1]):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (batch or 1, {shape[1]})")
        if self.config.position_biased_input and shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {shape[1]} exceeds max_position_embeddings={self.config.max_position_embeddings}, "
                "the size of the absolute position table this model adds to its input (position_biased_input=True)"
            )
        if is_torchdynamo_compiling():  # value checks need a host sync and break graphs
            return
        ranges = [("input_ids", input_ids, self.config.vocab_size)]
        if self.config.type_vocab_size > 0:  # with no token-type table (v3), token_type_ids are ignored
            ranges.append(("token_type_ids", token_type_ids, self.config.type_vocab_size))
        if self.config.position_biased_input:
            ranges.append(("position_ids", position_ids, self.config.max_position_embeddings))
        for range_name, ids, upper in ranges:
            if ids is not None and ids.numel() and (ids.min() < 0 or ids.max() >= upper):
                raise ValueError(
                    f"{range_name} must lie in [0, {upper}), got values from {int(ids.min())} to {int(ids.max())}"
                )

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        self._check_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        hidden_states = self.embeddings(input_ids, inputs_embeds, token_type_ids, position_ids, attention_mask)
        seq_len = hidden_states.shape[1]
        relative_lookup, rel_embeddings = self.relative_inputs(seq_len, hidden_states.device)
        documents = document_ids(position_ids, hidden_states.shape[0])  # packed documents, if position_ids restart
        unpadded = None
        if self.can_unpad() and UnpaddedBatch.applies(attention_mask, documents, self.config.unpad_batches):
            unpadded = UnpaddedBatch(attention_mask, documents, relative_lookup)
            hidden_states, pair_mask = unpadded.unpad(hidden_states), None  # (1, tokens, H)
        else:
            pair_mask = pair_attention_mask(attention_mask, documents)  # (B, 1, N, N)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                pair_mask,
                relative_lookup,
                rel_embeddings,
                padding_mask=attention_mask,
                unpadded=unpadded,
                **kwargs,
            )
        if unpadded is not None:
            hidden_states = unpadded.pad(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)

    def can_unpad(self) -> bool:
        """Unpadded batches keep every output the same, except where the padded layout itself is read: hidden
        states and attentions captured per layer, the v2 convolution (it reads neighbouring positions), and traced
        graphs (torch.compile, export), whose shapes must not depend on the mask's values."""
        return self.config.conv_kernel_size == 0 and not capturing_layer_outputs() and not is_torchdynamo_compiling()


# ----------------------------------------------------------------------------------------------------------------
# Masked language modelling with the enhanced mask decoder (EMD)
# ----------------------------------------------------------------------------------------------------------------


class DebertaLiteLMHead(nn.Module):
    """dense(H -> E) -> activation -> LayerNorm -> logits against the tied word embeddings, plus a bias."""

    def __init__(self, config: DebertaLiteConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size)  # weight tied to word_embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden_states))))


class DebertaLiteForMaskedLM(DebertaLitePreTrainedModel):
    """MLM through the enhanced mask decoder: absolute positions enter only right before the softmax.

    `logits` is (B, N, vocab), as in every transformers masked LM. `sparse_prediction=True` (with labels) decodes only
    the masked positions, for speed in pretraining: `logits` is then (num_masked, vocab) in row-major order of the
    mask, and the loss is the same.
    """

    _tied_weights_keys = {"lm_head.decoder.weight": "deberta.embeddings.word_embeddings.weight"}
    accepts_loss_kwargs = True

    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        self.deberta = DebertaLiteModel(config, with_position_embeddings=self.uses_emd)
        self.lm_head = DebertaLiteLMHead(config)
        self.post_init()
        if config.tie_word_embeddings:
            # Stored once, as the word embeddings. Declared as not saved, Trainer's resume re-ties it quietly instead
            # of warning about a missing key; an untied decoder is saved like any weight.
            self._keys_to_ignore_on_save = ["lm_head.decoder.weight"]
        if self.uses_emd:
            # The EMD reads the encoder's hidden states, whose hooks transformers installs on first use; installing
            # them inside torch.compile's trace fails (a lock), so they are installed here.
            maybe_install_capturing_hooks(self.deberta)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head.decoder = new_embeddings

    @property
    def uses_emd(self) -> bool:
        # The original decodes through the EMD only when the input carries no absolute positions.
        return self.config.emd_num_layers > 0 and not self.config.position_biased_input

    def enhanced_mask_decoder(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Z1 = H + E_abs, Z_{t+1} = last_layer(keys/values H, query Z_t), `emd_num_layers` times.

        H is the second-to-last encoder output; the last layer's own weights are reused, with the same relative
        positions and relative table, so the EMD adds no parameters. Returns (B, N, H); with `masked` (B, N), only
        the queries at masked positions are computed (keys and values stay whole), and it returns
        (num_masked, H) in the order of `hidden_states[masked]`.
        """
        embeddings = self.deberta.embeddings
        batch_size, seq_len = hidden_states.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=hidden_states.device)[None, :]
        absolute = embeddings.position_embeddings(position_ids)  # raw rows, not layer-normed
        if embeddings.embed_proj is not None:  # the table is embedding_size wide
            absolute = embeddings.embed_proj(absolute)
        relative_lookup, rel_embeddings = self.deberta.relative_inputs(seq_len, hidden_states.device)
        query_states = hidden_states + absolute
        query_positions = None
        documents = document_ids(position_ids, batch_size)
        if masked is None:
            pair_mask = pair_attention_mask(attention_mask, documents)
        else:
            # Each row's masked positions in order, then filler (position 0) up to the longest row's count; at least
            # one query, so that a batch with nothing masked still backpropagates (zeros) through every weight.
            counts = masked.sum(dim=-1)
            most = max(int(counts.max()) if masked.numel() else 0, 1)
            query_positions = torch.argsort((~masked).to(torch.int8), dim=-1, stable=True)[:, :most]  # (B, M)
            is_query = torch.arange(most, device=masked.device) < counts[:, None]  # (B, M)
            query_states = torch.gather(
                query_states, 1, query_positions[..., None].expand(-1, -1, query_states.shape[-1])
            )
            keep = torch.ones_like(masked) if attention_mask is None else attention_mask.bool()
            pair_mask = is_query[:, None, :, None] & keep[:, None, None, :]  # (B, 1, M, N)
            if documents is not None:  # a query sees the keys of its own document
                query_documents = torch.gather(documents, 1, query_positions)
                pair_mask = pair_mask & (query_documents[:, None, :, None] == documents[:, None, None, :])
        last_layer = self.deberta.layers[-1]
        with outside_output_capture():  # the layer's capture hooks fire, but nothing collects here
            for _ in range(self.config.emd_num_layers):
                query_states = last_layer(
                    hidden_states,
                    pair_mask,
                    relative_lookup,
                    rel_embeddings,
                    query_states,
                    padding_mask=attention_mask,
                    query_positions=query_positions,
                )
        return query_states if masked is None else query_states[is_query]

    def _check_emd_length(self, seq_len: int, position_ids: torch.LongTensor | None):
        limit = self.config.max_position_embeddings
        too_far = position_ids is not None and not is_torchdynamo_compiling() and int(position_ids.max()) >= limit
        if seq_len > limit or too_far:
            raise ValueError(
                f"Masked LM input of {seq_len} tokens: the enhanced mask decoder adds absolute position embeddings, "
                f"so masked LM is capped at max_position_embeddings={limit} tokens (position ids below {limit}). "
                "Truncate the input; the bare encoder (DebertaLiteModel) has no such cap."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        sparse_prediction: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""sparse_prediction: with `labels`, decode only the masked positions (labels != -100): the enhanced mask
        decoder computes queries there only, and `logits` is (num_masked, vocab). The vocabulary projection and the
        decoder are most of the head's cost, so pretraining uses it."""
        if self.uses_emd and (input_ids is not None or inputs_embeds is not None):
            self._check_emd_length((input_ids if input_ids is not None else inputs_embeds).shape[1], position_ids)
        # Trainer's count of masked tokens over the whole accumulated batch: sum the loss and divide by it, so
        # gradient accumulation weighs every masked token equally.
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        requested = kwargs.pop("output_hidden_states", self.config.output_hidden_states)
        wanted = self._requested_hidden_states(requested)
        # The EMD reads the second-to-last hidden state: capture it as well, and return only what was asked for.
        captured = wanted | {self.config.num_hidden_layers - 1} if self.uses_emd else wanted
        outputs = self.deberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=sorted(captured) if captured else False,
            **kwargs,
        )
        masked = labels != -100 if labels is not None and sparse_prediction else None
        if self.uses_emd:
            sequence_output = self.enhanced_mask_decoder(
                outputs.hidden_states[-2], attention_mask, position_ids, masked
            )
        else:
            sequence_output = outputs.last_hidden_state if masked is None else outputs.last_hidden_state[masked]

        loss = None
        if masked is not None:
            logits = self.lm_head(sequence_output)  # (num_masked, V)
            targets = labels[masked]
        else:
            logits = self.lm_head(sequence_output)  # (B, N, V)
            targets = labels
        if labels is not None:
            # A sum over a count, with no branch on the count, so torch.compile traces it whatever the mask holds.
            # With nothing masked the sum is an empty one: a zero loss that still backpropagates (zero gradients).
            count = (labels != -100).sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
            total = CrossEntropyLoss(reduction="sum")(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
            loss = total / count.to(total.device).clamp(min=1)
        hidden_states = None
        if wanted:
            hidden_states = tuple(state if i in wanted else None for i, state in enumerate(outputs.hidden_states))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=outputs.attentions)

    def _requested_hidden_states(self, output_hidden_states: bool | int | list[int] | None) -> set[int]:
        """The indices of the hidden states the caller asked for (all of them for True, none for False)."""
        selection = selected_hidden_states(output_hidden_states)
        if selection is None:
            return set(range(self.config.num_hidden_layers + 1)) if output_hidden_states else set()
        return resolve_hidden_states_indices(self.deberta, selection)


# ----------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------


class DebertaLiteContextPooler(nn.Module):
    """First token -> dropout -> dense -> activation (DeBERTa's ContextPooler)."""

    def __init__(self, config: DebertaLiteConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_hidden_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.act = ACT2FN[config.pooler_hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))


def sequence_classification_loss(config: DebertaLiteConfig, logits: torch.Tensor, labels: torch.Tensor):
    """Regression, single-label or multi-label loss, chosen from `problem_type` as transformers' heads do.

    An unset `problem_type` is inferred per call and not written back to the config: a config that changes after the
    first step would make torch.compile recompile.
    """
    num_labels = logits.shape[-1]
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(-1), labels.view(-1).to(logits.dtype))
        return MSELoss()(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class DebertaLiteForSequenceClassification(DebertaLitePreTrainedModel):
    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaLiteModel(config)
        self.pooler = DebertaLiteContextPooler(config)
        cls_dropout = config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout
        self.dropout = nn.Dropout(cls_dropout)
        self.classifier = nn.Linear(config.pooler_hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        outputs = self.deberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class DebertaLiteForTokenClassification(DebertaLitePreTrainedModel):
    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaLiteModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        outputs = self.deberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, N, num_labels)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class DebertaLiteMaskPredictionHead(nn.Module):
    """DeBERTa-v3's replaced-token-detection head: LayerNorm(h_i + h_[CLS]) -> dense -> activation -> one logit.

    Adding the first token's state to every token before the norm is what the released v3 discriminators were
    trained with; the weight names (`mask_predictions.dense`, `.classifier`, the norm) are theirs, so their heads load.
    """

    def __init__(self, config: DebertaLiteConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        states = self.norm(hidden_states + hidden_states[:, :1])  # (B, N, H)
        return self.classifier(self.act(self.dense(states))).squeeze(-1)  # (B, N)


class DebertaLiteForReplacedTokenDetection(DebertaLitePreTrainedModel):
    """The DeBERTa-v3 discriminator: for every token, the logit that it was replaced (ELECTRA's pretraining head).

    `labels` (B, N): 1 replaced, 0 original, -100 ignored (padding, special tokens); the loss is the mean binary
    cross-entropy over the tokens not ignored. Loads with `AutoModelForPreTraining`; the encoder it trains loads with
    every other head.
    """

    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        self.deberta = DebertaLiteModel(config)
        self.mask_predictions = DebertaLiteMaskPredictionHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        outputs = self.deberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.mask_predictions(outputs.last_hidden_state)  # (B, N)
        loss = None
        if labels is not None:
            # A mean over the scored tokens as a sum over a count, without indexing by the mask: no data-dependent
            # shape, so torch.compile keeps one graph.
            scored = labels != -100
            per_token = BCEWithLogitsLoss(reduction="none")(logits.float(), labels.clamp(min=0).float())
            loss = (per_token * scored).sum() / scored.sum().clamp(min=1)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class DebertaLiteForQuestionAnswering(DebertaLitePreTrainedModel):
    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(
                f"question answering predicts span starts and ends: num_labels must be 2, got {config.num_labels}"
            )
        self.deberta = DebertaLiteModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> QuestionAnsweringModelOutput:
        outputs = self.deberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, N, 2)
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the input (answer truncated away) are clamped to an ignored index.
            ignored_index = start_logits.shape[1]
            loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
            start_positions = start_positions.view(-1).clamp(0, ignored_index)
            end_positions = end_positions.view(-1).clamp(0, ignored_index)
            loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class DebertaLiteForMultipleChoice(DebertaLitePreTrainedModel):
    def __init__(self, config: DebertaLiteConfig):
        super().__init__(config)
        self.deberta = DebertaLiteModel(config)
        self.pooler = DebertaLiteContextPooler(config)
        cls_dropout = config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout
        self.dropout = nn.Dropout(cls_dropout)
        self.classifier = nn.Linear(config.pooler_hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultipleChoiceModelOutput:
        # (B, C, N) -> (B·C, N): every choice is encoded as its own sequence.
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(tensor: torch.Tensor | None, trailing: int = 1) -> torch.Tensor | None:
            return None if tensor is None else tensor.reshape(-1, *tensor.shape[-trailing:])

        outputs = self.deberta(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids),
            inputs_embeds=flat(inputs_embeds, trailing=2),
            **kwargs,
        )
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))  # (B·C, 1)
        reshaped_logits = logits.view(-1, num_choices)  # (B, C)
        loss = None if labels is None else CrossEntropyLoss()(reshaped_logits, labels)
        return MultipleChoiceModelOutput(
            loss=loss, logits=reshaped_logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# ----------------------------------------------------------------------------------------------------------------
# PEFT's defaults
# ----------------------------------------------------------------------------------------------------------------


def register_peft_target_modules() -> None:
    """Give "deberta-lite" every default PEFT has for "deberta-v2" (LoRA: query_proj and value_proj, IA3, ...).

    PEFT picks `target_modules` from its public per-model-type tables when a config names none; the module names here
    are DebertaV2's, so its defaults apply unchanged. Nothing happens when PEFT is not installed.
    """
    if importlib.util.find_spec("peft") is None:
        return
    import peft.utils.constants

    for name, table in vars(peft.utils.constants).items():
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict) and "deberta-v2" in table:
            table.setdefault(DebertaLiteConfig.model_type, table["deberta-v2"])


register_peft_target_modules()


__all__ = ["DebertaLitePreTrainedModel", *HEADS]
