"""The oldest transformers DeBERTa-lite runs on: one number, stated in pyproject.toml, saved configs and model cards,
and a one-line error on anything older."""

import importlib.util
import json
import re

import pytest
import tomllib
import transformers

from deberta_lite import DebertaLiteModel
from deberta_lite.configuration_deberta_lite import MIN_TRANSFORMERS_VERSION
from deberta_lite.hub import write_model_card

from helpers import ROOT, tiny_config


def _import_configuration_file():
    """Import the configuration file as remote code would: as a module of its own, not through the package."""
    spec = importlib.util.spec_from_file_location(
        "remote_configuration_deberta_lite", ROOT / "deberta_lite" / "configuration_deberta_lite.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_older_transformers_gets_one_line_naming_the_version(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.22.2")
    with pytest.raises(ImportError) as raised:
        _import_configuration_file()
    message = str(raised.value)
    assert "\n" not in message
    assert f"transformers>={MIN_TRANSFORMERS_VERSION}" in message and "found 5.22.2" in message


def test_the_installed_transformers_passes_the_check():
    assert _import_configuration_file().MIN_TRANSFORMERS_VERSION == MIN_TRANSFORMERS_VERSION


def test_pyproject_requires_the_same_minimum():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [line for line in dependencies if re.match(r"transformers\b", line)]
    assert f">={MIN_TRANSFORMERS_VERSION}" in requirement


def test_saved_config_and_model_card_state_the_minimum(tmp_path):
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["min_transformers_version"] == MIN_TRANSFORMERS_VERSION
    card = write_model_card(tmp_path).read_text()
    assert f"transformers>={MIN_TRANSFORMERS_VERSION}" in card
