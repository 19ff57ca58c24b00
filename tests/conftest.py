"""Fixtures for every test module: no network, a fixed seed, a trained tokenizer (tokenizer_dir) and a loopback Hub
(hub). Plain helpers (tiny configs, inputs, comparisons, subprocesses) are in helpers.py."""

import os


# Before anything imports huggingface_hub: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

from helpers import ROOT
from hub_server import start_hub_server


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A 1000-piece tokenizer trained on the bundled corpus."""
    from deberta_lite.tokenization import read_text_files, train_unigram_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    corpus = read_text_files([ROOT / "data" / "wiki_sample" / "train.txt"])
    train_unigram_tokenizer(corpus, vocab_size=1000).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hub():
    """A loopback Hugging Face Hub (tests/hub_server.py) for the module's tests: (its state, its URL). Subprocesses
    reach it through helpers.hub_env."""
    server, state, url = start_hub_server()
    yield state, url
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
