"""DeBERTa-lite configuration.

Field names and meanings follow transformers' `DebertaV2Config` (so configs convert one to one), with every field
declared and typed here: the modeling code never reads an undeclared attribute. Defaults give a DeBERTa-v3-base
shaped model. Invalid values raise a `ValueError` at construction that names the field and what is allowed.

This file is copied next to the weights by `save_pretrained` (remote code), so it imports only transformers and
what transformers itself requires (huggingface_hub, packaging).
"""

from dataclasses import field
from typing import NamedTuple

import transformers
from packaging.version import Version


# The oldest transformers this file and the modeling file beside it run on; pyproject.toml requires the same.
# Transformers imports this file first when it loads remote code, and older releases fail further on with errors
# that do not name the cause (no PreTrainedConfig before 5.0, no dataclass config before 5.4, an SDPA kernel that
# silently drops the relative-position bias before 5.14, output-capturing helpers missing before 5.23), so the
# check comes before any other import from transformers.
MIN_TRANSFORMERS_VERSION = "5.23.0"
if Version(transformers.__version__) < Version(MIN_TRANSFORMERS_VERSION):
    raise ImportError(
        f"DeBERTa-lite needs transformers>={MIN_TRANSFORMERS_VERSION} (found {transformers.__version__}): "
        f"pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
    )

from huggingface_hub.dataclasses import strict  # noqa: E402  (after the version check)
from transformers import PreTrainedConfig  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402


class Head(NamedTuple):
    auto_class: str  # the transformers Auto class that loads it
    # Its task, for pipelines, model cards and ONNX export: a transformers pipeline task, optimum's name where
    # transformers has no pipeline, or None for a pretraining head that neither has.
    task: str | None


# Every model class of the package, once. The Auto registration, `auto_map`, model cards, ONNX export, conversion
# to and from DebertaV2 (DebertaV2Xxx <-> DebertaLiteXxx) and the tests all read this table: a new head is one line
# here and its class in the modeling file.
HEADS = {
    "DebertaLiteModel": Head("AutoModel", "feature-extraction"),
    "DebertaLiteForMaskedLM": Head("AutoModelForMaskedLM", "fill-mask"),
    "DebertaLiteForSequenceClassification": Head("AutoModelForSequenceClassification", "text-classification"),
    "DebertaLiteForTokenClassification": Head("AutoModelForTokenClassification", "token-classification"),
    "DebertaLiteForQuestionAnswering": Head("AutoModelForQuestionAnswering", "question-answering"),
    "DebertaLiteForMultipleChoice": Head("AutoModelForMultipleChoice", "multiple-choice"),
    "DebertaLiteForReplacedTokenDetection": Head("AutoModelForPreTraining", None),
}

# Written into every saved config so `AutoXxx.from_pretrained(dir, trust_remote_code=True)` finds each class in the
# copied source files. transformers only records the class that was saved; a user who saved the base model must
# still be able to load the MLM or classification head from the same directory.
AUTO_MAP = {
    "AutoConfig": "configuration_deberta_lite.DebertaLiteConfig",
    **{head.auto_class: f"modeling_deberta_lite.{name}" for name, head in HEADS.items()},
}

POS_ATT_TYPES = ("c2p", "p2c")
NORM_REL_EBD = ("none", "layer_norm")


@strict
class DebertaLiteConfig(PreTrainedConfig):
    r"""Configuration of a DeBERTa-lite encoder; each field is documented where it is declared."""

    model_type = "deberta-lite"

    vocab_size: int = 128100
    """Number of token ids; `input_ids` must lie in [0, vocab_size)."""
    hidden_size: int = 768
    """Width of the encoder (H)."""
    num_hidden_layers: int = 12
    """Number of transformer blocks, every one with disentangled attention."""
    num_attention_heads: int = 12
    """Attention heads per layer; must divide `hidden_size`."""
    intermediate_size: int = 3072
    """Width of the feed-forward block."""
    hidden_act: str = "gelu"
    """Activation of the feed-forward block and of the MLM head (any key of transformers' ACT2FN)."""
    hidden_dropout_prob: float | int = 0.1
    """Dropout on embeddings, block outputs and the relative-position table."""
    attention_probs_dropout_prob: float | int = 0.1
    """Dropout on attention probabilities."""
    max_position_embeddings: int = 512
    """Rows of the absolute position table (input positions when `position_biased_input`, and the EMD)."""
    type_vocab_size: int = 0
    """Number of token types; 0 means no token-type embedding (DeBERTa-v3), and token_type_ids are ignored."""
    initializer_range: float | int = 0.02
    """Standard deviation of the normal initialisation of weights."""
    layer_norm_eps: float | int = 1e-7
    """Epsilon of every LayerNorm."""
    pad_token_id: int | None = 0
    """Id of the padding token (its embedding row gets no gradient)."""
    bos_token_id: int | None = None
    """Id of the tokenizer's start token ([CLS]); recorded for pipelines, unused by the model."""
    eos_token_id: int | None = None
    """Id of the tokenizer's end token ([SEP]); recorded for pipelines, unused by the model."""
    relative_attention: bool = True
    """Kept for DebertaV2 compatibility: DeBERTa-lite always uses disentangled relative attention, so only True."""
    max_relative_positions: int = -1
    """Largest relative distance; values < 1 mean `max_position_embeddings`."""
    position_buckets: int = 256
    """Number of log buckets k of relative positions (table has 2k rows); <= 0 means no bucketing."""
    pos_att_type: list[str] | str = field(default_factory=lambda: ["p2c", "c2p"])
    """Relative terms added to content attention: a non-empty subset of c2p, p2c (list or "p2c|c2p")."""
    share_att_key: bool = True
    """Project the relative table with the content query/key weights (v2/v3) instead of separate ones (v1)."""
    norm_rel_ebd: str = "layer_norm"
    """"layer_norm" to normalise the relative table once per forward (v2/v3), "none" otherwise."""
    position_biased_input: bool = False
    """Add absolute position embeddings to the input (v1); v2/v3 use False."""
    embedding_size: int | None = None
    """Width of the token embeddings; None means `hidden_size`, another value adds `embed_proj`."""
    conv_kernel_size: int = 0
    """Kernel of the v2 convolution after the first layer; 0 disables it. Must be odd."""
    conv_groups: int = 1
    """Groups of that convolution."""
    conv_act: str = "tanh"
    """Activation of that convolution."""
    pooler_hidden_size: int | None = None
    """Width of the ContextPooler; None means `hidden_size`."""
    pooler_dropout: float | int = 0.0
    """Dropout on the first token before the ContextPooler's dense layer."""
    pooler_hidden_act: str = "gelu"
    """Activation of the ContextPooler."""
    cls_dropout: float | int | None = None
    """Dropout before the classifier of sequence-level heads; None means `hidden_dropout_prob`."""
    emd_num_layers: int = 2
    """Passes of the enhanced mask decoder (the last layer reused); 0 turns the EMD off."""
    tie_word_embeddings: bool = True
    """Tie the MLM output projection to the input word embeddings."""
    unpad_batches: bool | None = None
    """Compute on real tokens only when the attention mask has padding: None (the default) when at least 5% of the
    batch is padding, True whenever there is padding, False never. The outputs are the same either way."""

    def __post_init__(self, **kwargs):
        # The DebertaV2 configs on the Hub spell pos_att_type as "p2c|c2p".
        if isinstance(self.pos_att_type, str):
            self.pos_att_type = [term.strip() for term in self.pos_att_type.lower().split("|") if term.strip()]
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.pooler_hidden_size is None:
            self.pooler_hidden_size = self.hidden_size
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        # Saved into config.json, so whoever holds only the checkpoint can see which transformers its code needs
        # (`transformers_version` is the release that saved it, not the oldest that loads it).
        kwargs["min_transformers_version"] = MIN_TRANSFORMERS_VERSION
        super().__post_init__(**kwargs)
        self._check_values()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """transformers' `get_config_dict`, with a DebertaV2 config translated on the way in: every DeBERTa-lite class
        then loads DebertaV2 checkpoints (microsoft/deberta-v3-base and the like), whose weights the modeling file
        renames as they load."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == DEBERTA_V2_MODEL_TYPE:
            config_dict = config_dict_from_deberta_v2(config_dict)
        return config_dict, kwargs

    @property
    def att_span(self) -> int:
        """k, the attention span: the relative-position table has 2k rows, and relative indices are clamped to
        [0, 2k). It is `position_buckets` with log buckets, else `effective_max_relative_positions`."""
        if self.position_buckets > 0:
            return self.position_buckets
        return self.effective_max_relative_positions

    @property
    def effective_max_relative_positions(self) -> int:
        """`max_relative_positions`, with "unset" (< 1) meaning `max_position_embeddings`: the distance at which the
        log buckets reach their last bucket."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    def _check_values(self):
        # Plain ValueErrors raised here, at construction: strict's `validate_*` hooks would wrap them in another
        # exception type.
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "embedding_size",
            "pooler_hidden_size",
            "conv_groups",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("type_vocab_size", "conv_kernel_size", "emd_num_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name in ("hidden_act", "conv_act", "pooler_hidden_act"):
            if getattr(self, name) not in ACT2FN:
                raise ValueError(f"{name}={getattr(self, name)!r} is not a known activation; allowed: {sorted(ACT2FN)}")
        if not self.relative_attention:
            raise ValueError("relative_attention must be True: DeBERTa-lite uses disentangled attention in every layer")
        if "p2p" in self.pos_att_type:
            raise ValueError(
                "pos_att_type 'p2p' is not supported (the original implementation's p2p branch is broken); "
                f"allowed: a non-empty subset of {list(POS_ATT_TYPES)}"
            )
        unknown = [term for term in self.pos_att_type if term not in POS_ATT_TYPES]
        if unknown or not self.pos_att_type or len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ValueError(
                f"pos_att_type={self.pos_att_type!r} is invalid; allowed: a non-empty subset of {list(POS_ATT_TYPES)}"
            )
        if self.norm_rel_ebd not in NORM_REL_EBD:
            raise ValueError(f"norm_rel_ebd={self.norm_rel_ebd!r} is invalid; allowed: {list(NORM_REL_EBD)}")
        if self.conv_kernel_size and self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"conv_kernel_size must be odd (the output keeps the input length), got {self.conv_kernel_size}"
            )
        if self.conv_kernel_size and self.hidden_size % self.conv_groups:
            raise ValueError(f"conv_groups ({self.conv_groups}) must divide hidden_size ({self.hidden_size})")
        if self.position_buckets > 0 and self.effective_max_relative_positions - 1 <= self.position_buckets // 2:
            raise ValueError(
                f"position_buckets={self.position_buckets} needs max_relative_positions (effective "
                f"{self.effective_max_relative_positions}) greater than position_buckets // 2 + 1 for the log "
                "buckets to be defined"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must be in [0, vocab_size={self.vocab_size}) or None, got {self.pad_token_id}"
            )


DEBERTA_V2_MODEL_TYPE = "deberta-v2"
# Fields DebertaV2 reads with getattr(config, name, default) and does not declare: absent means these values.
DEBERTA_V2_IMPLICIT_DEFAULTS = {
    "position_buckets": -1,
    "share_att_key": False,
    "norm_rel_ebd": "none",
    "conv_kernel_size": 0,
    "conv_groups": 1,
    "conv_act": "tanh",
}
# Bookkeeping that each side writes for itself.
NOT_CARRIED = (
    "model_type",
    "architectures",
    "transformers_version",
    "min_transformers_version",
    "auto_map",
    "legacy",
    "_name_or_path",
)


def lite_architecture(deberta_v2_architecture: str) -> str:
    """DebertaV2ForX -> DebertaLiteForX, for the classes both packages have (HEADS)."""
    name = deberta_v2_architecture.replace("DebertaV2", "DebertaLite", 1)
    if name not in HEADS:
        supported = sorted(head.replace("DebertaLite", "DebertaV2") for head in HEADS)
        raise ValueError(f"architecture {deberta_v2_architecture!r} has no DeBERTa-lite class; supported: {supported}")
    return name


def config_dict_from_deberta_v2(deberta_v2_config: dict) -> dict:
    """A DebertaV2 config.json (model_type "deberta-v2") as DebertaLiteConfig values describing the same model."""
    from transformers import DebertaV2Config

    values = {**DEBERTA_V2_IMPLICIT_DEFAULTS, **DebertaV2Config.from_dict(dict(deberta_v2_config)).to_dict()}
    if not values.get("relative_attention"):
        raise ValueError(
            "this DebertaV2 checkpoint has relative_attention=False, so it has no disentangled attention and "
            "DeBERTa-lite cannot load it; use transformers' DebertaV2 classes"
        )
    head_size = values.pop("attention_head_size", None)
    if head_size is not None and head_size * values["num_attention_heads"] != values["hidden_size"]:
        raise ValueError(
            f"attention_head_size={head_size} with num_attention_heads={values['num_attention_heads']} does not "
            f"match hidden_size={values['hidden_size']}; DeBERTa-lite needs heads x head size == hidden size"
        )
    architectures = [lite_architecture(name) for name in values.get("architectures") or []]
    values = {key: value for key, value in values.items() if key not in NOT_CARRIED}
    return {**values, "architectures": architectures or None}


__all__ = ["HEADS", "DebertaLiteConfig", "Head"]
