"""Conversion between transformers' DebertaV2 checkpoints (`model_type "deberta-v2"`) and DeBERTa-lite.

Works on checkpoint directories: config, weights (safetensors; pickle `.bin` only with `allow_pickle=True`, loaded
with `weights_only`), and tokenizer files, which are copied. Weight names go through one explicit rename table;
the result is checked against the target architecture built on the meta device, and any missing or unexpected key
outside the short, explicit lists below is an error, as is any shape mismatch.

The absolute position table is kept in both directions: DeBERTa-lite always has one (the enhanced mask decoder
needs it), original DeBERTa checkpoints carry one even when `position_biased_input=False`, and DebertaV2 ignores it
on load (`_keys_to_ignore_on_load_unexpected`). So lite -> DebertaV2 -> lite is lossless.
"""

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DebertaV2Config
from transformers.models.deberta_v2 import modeling_deberta_v2

from . import modeling_deberta_lite
from .configuration_deberta_lite import DebertaLiteConfig


LITE_TO_V2 = "deberta-lite->deberta-v2"
V2_TO_LITE = "deberta-v2->deberta-lite"

# (DeBERTa-lite prefix, DebertaV2 prefix), relative to the backbone; first match wins. "{i}" is a layer index.
RENAMES = [
    ("embeddings.norm.", "embeddings.LayerNorm."),
    ("layers.{i}.attention.out_proj.", "encoder.layer.{i}.attention.output.dense."),
    ("layers.{i}.attention_norm.", "encoder.layer.{i}.attention.output.LayerNorm."),
    ("layers.{i}.attention.", "encoder.layer.{i}.attention.self."),
    ("layers.{i}.intermediate.", "encoder.layer.{i}.intermediate.dense."),
    ("layers.{i}.output_norm.", "encoder.layer.{i}.output.LayerNorm."),
    ("layers.{i}.output.", "encoder.layer.{i}.output.dense."),
    ("layers.0.conv.conv.", "encoder.conv.conv."),
    ("layers.0.conv.norm.", "encoder.conv.LayerNorm."),
    ("rel_embeddings.", "encoder.rel_embeddings."),
    ("rel_norm.", "encoder.LayerNorm."),
    # The MLM head under the original DeBERTa names (DebertaV2ForMaskedLM with legacy=False).
    ("lm_head.dense.", "lm_predictions.lm_head.dense."),
    ("lm_head.norm.", "lm_predictions.lm_head.LayerNorm."),
    ("lm_head.decoder.bias", "lm_predictions.lm_head.bias"),
]

# Head classes, one to one; head weights (pooler, classifier, qa_outputs) keep their names.
ARCHITECTURES = {
    "DebertaV2Model": "DebertaLiteModel",
    "DebertaV2ForMaskedLM": "DebertaLiteForMaskedLM",
    "DebertaV2ForSequenceClassification": "DebertaLiteForSequenceClassification",
    "DebertaV2ForTokenClassification": "DebertaLiteForTokenClassification",
    "DebertaV2ForQuestionAnswering": "DebertaLiteForQuestionAnswering",
    "DebertaV2ForMultipleChoice": "DebertaLiteForMultipleChoice",
}

POSITION_TABLE = "embeddings.position_embeddings.weight"
# The replaced-token-detection head of original DeBERTa-v3 checkpoints: no DeBERTa-lite or DebertaV2 class has it,
# and transformers drops it on load too.
RTD_HEAD_PREFIX = "mask_predictions."

# Fields DebertaV2 reads with getattr(config, name, default) and does not declare: absent means these values.
V2_IMPLICIT_DEFAULTS = {
    "position_buckets": -1,
    "share_att_key": False,
    "norm_rel_ebd": "none",
    "conv_kernel_size": 0,
    "conv_groups": 1,
    "conv_act": "tanh",
}
# Bookkeeping that each side writes for itself.
NOT_CARRIED = ("model_type", "architectures", "transformers_version", "auto_map", "legacy", "_name_or_path")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spm.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "bpe_encoder.bin",
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly."""


def _compile_rules(direction: str) -> list[tuple[re.Pattern, str]]:
    rules = []
    for lite, v2 in RENAMES:
        source, target = (lite, v2) if direction == LITE_TO_V2 else (v2, lite)
        pattern = re.compile("^" + re.escape(source).replace(r"\{i\}", r"(?P<i>\d+)"))
        rules.append((pattern, target))
    return rules


def rename_state_dict(state_dict: dict[str, torch.Tensor], direction: str) -> dict[str, torch.Tensor]:
    """Rename backbone weights (with or without the `deberta.` prefix); other keys are kept as they are."""
    rules = _compile_rules(direction)
    renamed = {}
    for key, tensor in state_dict.items():
        prefix = "deberta." if key.startswith("deberta.") else ""
        name = key[len(prefix) :]
        for pattern, target in rules:
            match = pattern.match(name)
            if match:
                name = target.replace("{i}", match.groupdict().get("i") or "") + name[match.end() :]
                break
        renamed[prefix + name] = tensor
    return renamed


def deberta_v2_config_to_lite(v2_config: dict) -> DebertaLiteConfig:
    """Map a DebertaV2 config dict (as in config.json) to a DebertaLiteConfig with the same model."""
    values = {**V2_IMPLICIT_DEFAULTS, **DebertaV2Config.from_dict(dict(v2_config)).to_dict()}
    head_size = values.pop("attention_head_size", None)
    if head_size is not None and head_size * values["num_attention_heads"] != values["hidden_size"]:
        raise ConversionError(
            f"attention_head_size={head_size} with num_attention_heads={values['num_attention_heads']} does not "
            f"match hidden_size={values['hidden_size']}; DeBERTa-lite needs heads x head size == hidden size"
        )
    if not values.get("relative_attention"):
        raise ConversionError("relative_attention=False: this is not a DeBERTa with disentangled attention")
    architectures = [_map_architecture(name, ARCHITECTURES) for name in values.get("architectures") or []]
    values = {key: value for key, value in values.items() if key not in NOT_CARRIED}
    return DebertaLiteConfig(**values, architectures=architectures or None)


def lite_config_to_deberta_v2(config: DebertaLiteConfig) -> DebertaV2Config:
    """Map a DebertaLiteConfig to a DebertaV2Config; lite-only fields ride along as extras DebertaV2 ignores."""
    reverse = {lite: v2 for v2, lite in ARCHITECTURES.items()}
    architectures = [_map_architecture(name, reverse) for name in config.architectures or []]
    values = {key: value for key, value in config.to_dict().items() if key not in NOT_CARRIED}
    # legacy=False: DebertaV2's MLM head with the original DeBERTa weight names and tied output embeddings.
    return DebertaV2Config(**values, architectures=architectures or None, legacy=False)


def _map_architecture(name: str, mapping: dict[str, str]) -> str:
    if name not in mapping:
        raise ConversionError(f"architecture {name!r} cannot be converted; supported: {sorted(mapping)}")
    return mapping[name]


def load_state_dict(checkpoint_dir: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint directory: model.safetensors, a sharded index, or (opt-in) a pickle."""
    single = checkpoint_dir / "model.safetensors"
    index = checkpoint_dir / "model.safetensors.index.json"
    pickled = checkpoint_dir / "pytorch_model.bin"
    if single.exists():
        return load_file(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {key: value for shard in shards for key, value in load_file(checkpoint_dir / shard).items()}
    if pickled.exists():
        if not allow_pickle:
            raise ConversionError(
                f"{pickled} is a pickle file; pass allow_pickle=True (--allow_pickle) to read it with "
                "torch.load(weights_only=True)"
            )
        return torch.load(pickled, map_location="cpu", weights_only=True)
    raise ConversionError(f"no weights in {checkpoint_dir} (looked for model.safetensors, its index, pytorch_model.bin)")


def _architecture_class(config, module, base_class: str):
    """The class named first in `architectures`, else the bare encoder."""
    return getattr(module, (config.architectures or [base_class])[0])


def check_against_architecture(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, allowed_missing: set, allowed_unexpected: set
):
    """Strict key and shape check against `model` (built on the meta device): nothing outside the allowed lists."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict) - allowed_missing)
    unexpected = sorted(set(state_dict) - set(expected) - allowed_unexpected)
    mismatched = [
        f"{key}: {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            f"weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {mismatched}"
        )


def _position_table_key(model: torch.nn.Module) -> str:
    return ("deberta." if model.base_model_prefix in dict(model.named_children()) else "") + POSITION_TABLE


def convert_deberta_v2_to_lite(input_dir, output_dir, allow_pickle: bool = False) -> None:
    """Convert a transformers DebertaV2 checkpoint directory into a DeBERTa-lite one (with remote code)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    v2_config = json.loads((input_dir / "config.json").read_text())
    config = deberta_v2_config_to_lite(v2_config)
    source = load_state_dict(input_dir, allow_pickle)
    if any(key.startswith("cls.predictions.") for key in source):
        raise ConversionError(
            "this checkpoint has transformers' legacy MLM head (cls.predictions.*); only the original DeBERTa head "
            "names (lm_predictions.lm_head.*, DebertaV2ForMaskedLM with legacy=False) are converted"
        )
    if not config.architectures and any(key.startswith("lm_predictions.") for key in source):
        config.architectures = ["DebertaLiteForMaskedLM"]  # original checkpoints name no architecture
    state_dict = rename_state_dict(
        {key: value for key, value in source.items() if not key.startswith(RTD_HEAD_PREFIX)}, V2_TO_LITE
    )
    model_class = _architecture_class(config, modeling_deberta_lite, "DebertaLiteModel")
    with torch.device("meta"):
        reference = model_class(config)
    # A DebertaV2 checkpoint without input positions may lack the absolute table: it is then freshly initialised.
    # Tied output embeddings are not stored.
    allowed_missing = {_position_table_key(reference), *(reference._tied_weights_keys or {})}
    check_against_architecture(state_dict, reference, allowed_missing=allowed_missing, allowed_unexpected=set())
    model = model_class(config)
    model.load_state_dict(state_dict, strict=False)
    model.save_pretrained(output_dir)
    _copy_tokenizer_files(input_dir, output_dir)


def convert_lite_to_deberta_v2(input_dir, output_dir, allow_pickle: bool = False) -> None:
    """Convert a DeBERTa-lite checkpoint directory into a transformers DebertaV2 one."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    config = lite_config_to_deberta_v2(DebertaLiteConfig.from_json_file(input_dir / "config.json"))
    tied = set(modeling_deberta_lite.DebertaLiteForMaskedLM._tied_weights_keys)
    state_dict = rename_state_dict(
        {key: value for key, value in load_state_dict(input_dir, allow_pickle).items() if key not in tied}, LITE_TO_V2
    )
    with torch.device("meta"):
        reference = _architecture_class(config, modeling_deberta_v2, "DebertaV2Model")(config)
    # DebertaV2 builds no absolute table when position_biased_input=False; it is kept for the way back.
    check_against_architecture(
        state_dict, reference, allowed_missing=set(), allowed_unexpected={_position_table_key(reference)}
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(output_dir)
    save_file({key: value.contiguous() for key, value in state_dict.items()}, output_dir / "model.safetensors",
              metadata={"format": "pt"})
    _copy_tokenizer_files(input_dir, output_dir)


def convert_checkpoint(input_dir, output_dir, allow_pickle: bool = False) -> str:
    """Convert in the direction given by the input config's model_type; returns that direction."""
    config_path = Path(input_dir) / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{config_path} not found: is {input_dir} a checkpoint directory?")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type == DebertaV2Config.model_type:
        convert_deberta_v2_to_lite(input_dir, output_dir, allow_pickle)
        return V2_TO_LITE
    if model_type == DebertaLiteConfig.model_type:
        convert_lite_to_deberta_v2(input_dir, output_dir, allow_pickle)
        return LITE_TO_V2
    raise ConversionError(
        f"{config_path} has model_type {model_type!r}; expected {DebertaV2Config.model_type!r} or "
        f"{DebertaLiteConfig.model_type!r}"
    )


def _copy_tokenizer_files(input_dir: Path, output_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (input_dir / name).exists():
            shutil.copy2(input_dir / name, output_dir / name)
