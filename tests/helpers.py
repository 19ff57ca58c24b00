"""Plain helpers the test modules share, imported as `from helpers import ...` (fixtures live in conftest.py)."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from deberta_lite import DebertaLiteConfig


ROOT = Path(__file__).resolve().parents[1]
# Small slices of real data sets, bundled with their source and license (data/*/README.md).
DATA = ROOT / "data"

TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    position_buckets=8,
    max_relative_positions=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def load_script(name: str):
    """Import scripts/<name>.py as a module, so tests call its main(argv) directly."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> DebertaLiteConfig:
    return DebertaLiteConfig(**{**TINY, **overrides})


def padded_batch(vocab_size: int = 100, batch: int = 3, length: int = 12, seed: int = 0):
    """input_ids and an attention mask with a short row, a full row and, for batch > 2, a half row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, length // 3 :] = 0
    if batch > 2:
        attention_mask[2, length // 2 :] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


# The shared tiny model, in DebertaV2's terms (the relative-position fields vary per case below).
V2_TINY = {
    **{key: value for key, value in TINY.items() if key not in ("position_buckets", "max_relative_positions")},
    "relative_attention": True,
}

CASES = {
    # (a) DeBERTa-v3: buckets, shared keys, layer-normed relative table, no absolute input positions
    "v3": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
               pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0),
    # (b) DeBERTa v1: no buckets, separate position projections, c2p|p2c, no relative LayerNorm
    "v1": dict(max_relative_positions=-1, share_att_key=False, pos_att_type="c2p|p2c", position_biased_input=True,
               type_vocab_size=0),
    # (c) DeBERTa-v2-xlarge: the convolution after the first layer
    "v2_xlarge": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
                      pos_att_type="p2c|c2p", position_biased_input=False, conv_kernel_size=3, conv_act="gelu"),
    # (d) embedding_size != hidden_size, with two token types
    "embed_proj": dict(position_buckets=8, max_relative_positions=32, share_att_key=True, norm_rel_ebd="layer_norm",
                       pos_att_type="p2c|c2p", position_biased_input=False, embedding_size=16, type_vocab_size=2),
}


def _inputs(config):
    input_ids, attention_mask = padded_batch()
    token_type_ids = (torch.arange(12) >= 5).long().expand(3, 12).contiguous() if config.type_vocab_size else None
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


# ---------------------------------------------------------------- subprocesses and the loopback Hub


# Put ahead of a subprocess's script: deberta_lite cannot be imported there, as on a machine with transformers alone.
WITHOUT_DEBERTA_LITE = """
import importlib.abc
import sys


class _BlockDebertaLite(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "deberta_lite" or name.startswith("deberta_lite."):
            raise ImportError("deberta_lite is blocked in this process")


sys.meta_path.insert(0, _BlockDebertaLite())
try:
    import deberta_lite  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("deberta_lite should not be importable here")
"""


def run_python(source: str, env: dict, cwd, *args, without_deberta_lite: bool = False) -> subprocess.CompletedProcess:
    """Run `source` as cwd/script.py in a fresh interpreter, with `args` as its argv; `without_deberta_lite` makes
    importing the package fail there, so only remote code can provide the model."""
    script = cwd / "script.py"
    script.write_text((WITHOUT_DEBERTA_LITE if without_deberta_lite else "") + textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def hub_env(url: str, home, token: bool = True) -> dict:
    """The environment of a subprocess that talks to the loopback Hub at `url` (the `hub` fixture), with its own
    caches under `home`: huggingface_hub reads HF_ENDPOINT when it is imported."""
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           "HF_MODULES_CACHE": str(home / "modules"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = "hf_test_token"
    return env
