"""Conversion between transformers' DebertaV2 checkpoints (`model_type "deberta-v2"`) and DeBERTa-lite.

Loading needs no conversion: every DeBERTa-lite class reads a DebertaV2 checkpoint in `from_pretrained` (the config
is translated by the configuration file, the weight names by the renames the modeling file registers with
transformers). This module writes converted checkpoint directories, in both directions, with the same two tables:

- DebertaV2 -> DeBERTa-lite: `from_pretrained`, then `save_pretrained`, after checking that nothing was missing,
  left over or re-initialised.
- DeBERTa-lite -> DebertaV2: each weight of transformers' DebertaV2 architecture is looked up under its DeBERTa-lite
  name (the renames applied forward), and the masked-LM head is written under the original DeBERTa names
  (`lm_predictions.lm_head.*`, DebertaV2ForMaskedLM with legacy=False).

The absolute position table stays with the models that own it: the masked LM's enhanced mask decoder reads it even
when the input does not (`position_biased_input=False`), and DebertaV2 ignores it on load there. So lite ->
DebertaV2 -> lite is lossless. Tokenizer files are copied.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DebertaV2Config
from transformers.core_model_loading import WeightRenaming
from transformers.models.deberta_v2 import modeling_deberta_v2

from . import modeling_deberta_lite
from .configuration_deberta_lite import NOT_CARRIED, DebertaLiteConfig, config_dict_from_deberta_v2
from .modeling_deberta_lite import DEBERTA_V2_KEY_RENAMES


LITE_TO_V2 = "deberta-lite->deberta-v2"
V2_TO_LITE = "deberta-v2->deberta-lite"

POSITION_TABLE = "embeddings.position_embeddings.weight"
RTD_HEAD = "mask_predictions."

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


def deberta_v2_config_to_lite(v2_config: dict) -> DebertaLiteConfig:
    """Map a DebertaV2 config dict (as in config.json) to a DebertaLiteConfig with the same model."""
    try:
        return DebertaLiteConfig.from_dict(config_dict_from_deberta_v2(v2_config))
    except ValueError as error:
        raise ConversionError(str(error)) from error


def lite_config_to_deberta_v2(config: DebertaLiteConfig) -> DebertaV2Config:
    """Map a DebertaLiteConfig to a DebertaV2Config; lite-only fields ride along as extras DebertaV2 ignores."""
    # A head transformers has no DebertaV2 class for (replaced token detection) is written as Microsoft writes it:
    # no architectures, the head's weights beside the encoder's.
    architectures = [
        v2_name
        for name in config.architectures or []
        if hasattr(modeling_deberta_v2, v2_name := name.replace("DebertaLite", "DebertaV2", 1))
    ]
    values = {key: value for key, value in config.to_dict().items() if key not in NOT_CARRIED}
    # legacy=False: DebertaV2's MLM head with the original DeBERTa weight names and tied output embeddings.
    return DebertaV2Config(**values, architectures=architectures or None, legacy=False)


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
    raise ConversionError(
        f"no weights in {checkpoint_dir} (looked for model.safetensors, its index, pytorch_model.bin)"
    )


def _architecture_class(config, module, base_class: str):
    """The class named first in `architectures`, else the bare encoder."""
    name = (config.architectures or [base_class])[0]
    if not hasattr(module, name):
        raise ConversionError(f"architecture {name!r} cannot be converted")
    return getattr(module, name)


def convert_deberta_v2_to_lite(input_dir, output_dir, allow_pickle: bool = False) -> None:
    """Convert a transformers DebertaV2 checkpoint directory into a DeBERTa-lite one (with remote code)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    config = deberta_v2_config_to_lite(json.loads((input_dir / "config.json").read_text()))
    source_keys = load_state_dict(input_dir, allow_pickle).keys()  # refuses a pickle without the opt-in
    if not config.architectures:  # original checkpoints name no architecture: their head tells
        if any(key.startswith(("lm_predictions.", "cls.predictions.")) for key in source_keys):
            config.architectures = ["DebertaLiteForMaskedLM"]
        elif any(key.startswith(RTD_HEAD) for key in source_keys):
            config.architectures = ["DebertaLiteForReplacedTokenDetection"]
    model_class = _architecture_class(config, modeling_deberta_lite, "DebertaLiteModel")
    pickle_only = not any(input_dir.glob("*.safetensors"))
    model, info = model_class.from_pretrained(
        input_dir, config=config, use_safetensors=not pickle_only, output_loading_info=True
    )
    # A checkpoint saved by transformers without input positions lacks the table the EMD reads: it is then freshly
    # initialised, as DebertaV2 itself would.
    missing = [key for key in info["missing_keys"] if not key.endswith(POSITION_TABLE)]
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ConversionError(
            f"weights do not fit {model_class.__name__}: missing {sorted(missing)}, unexpected "
            f"{sorted(info['unexpected_keys'])}, shape mismatches {sorted(info['mismatched_keys'])}"
        )
    model.save_pretrained(output_dir)
    _copy_tokenizer_files(input_dir, output_dir)


def convert_lite_to_deberta_v2(input_dir, output_dir, allow_pickle: bool = False) -> None:
    """Convert a DeBERTa-lite checkpoint directory into a transformers DebertaV2 one."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    config = lite_config_to_deberta_v2(DebertaLiteConfig.from_json_file(input_dir / "config.json"))
    lite = load_state_dict(input_dir, allow_pickle)
    with torch.device("meta"):
        reference = _architecture_class(config, modeling_deberta_v2, "DebertaV2Model")(config)
    renames = [WeightRenaming(source, target) for source, target in DEBERTA_V2_KEY_RENAMES]
    # A head with no DebertaV2 class is written on the bare encoder, which keeps its `deberta.` prefix (as in
    # Microsoft's checkpoints, where the prefix sits beside the head's weights).
    keys = list(reference.state_dict())
    prefix = (
        "deberta." if any(key.startswith("deberta.") for key in lite) and not keys[0].startswith("deberta.") else ""
    )
    state_dict, missing = {}, []
    for key in keys:
        lite_key = prefix + key
        for rename in renames:
            lite_key, _ = rename.rename_source_key(lite_key)
        if lite_key in lite:
            state_dict[prefix + key] = lite.pop(lite_key)
        else:
            missing.append(lite_key)
    # DebertaV2 builds no absolute table when position_biased_input=False; it is kept for the way back.
    position_table = [key for key in lite if key.endswith(POSITION_TABLE)]
    state_dict.update((key, lite.pop(key)) for key in position_table)
    # The replaced-token-detection head under its original names (DebertaV2 skips them on load).
    rtd_head = [key for key in lite if key.startswith(RTD_HEAD)]
    state_dict.update((key.replace(".norm.", ".LayerNorm."), lite.pop(key)) for key in rtd_head)
    lite.pop("lm_head.decoder.weight", None)  # the tied output embedding, when it was stored
    if missing or lite:
        raise ConversionError(
            f"weights do not fit {type(reference).__name__}: missing {sorted(missing)}, unexpected {sorted(lite)}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(output_dir)
    save_file(
        {key: value.contiguous() for key, value in state_dict.items()},
        output_dir / "model.safetensors",
        metadata={"format": "pt"},
    )
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
