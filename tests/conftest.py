"""Shared fixtures: offline, seeded, tiny configs (vocab 100, hidden 32, 2 layers)."""

import importlib.util
import os

# Before anything imports huggingface_hub: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A 1000-piece tokenizer trained on the bundled corpus."""
    from deberta_lite.tokenization import read_text_files, train_unigram_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    corpus = read_text_files([ROOT / "data" / "wiki_sample" / "train.txt"])
    train_unigram_tokenizer(corpus, vocab_size=1000).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
