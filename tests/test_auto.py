"""Auto classes in-process, save/load round trips, and remote code where deberta_lite cannot be imported."""

import json
import os

import pytest
import torch
from transformers import AutoConfig, PreTrainedModel

import deberta_lite
from deberta_lite import (
    DebertaLiteConfig,
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForReplacedTokenDetection,
    DebertaLiteForSequenceClassification,
    DebertaLiteModel,
    DebertaLitePreTrainedModel,
    modeling_deberta_lite,
)
from deberta_lite.configuration_deberta_lite import AUTO_MAP

from helpers import ROOT, padded_batch, run_python, tiny_config


# (Auto class, DeBERTa-lite class) for every head, from the package's one table of heads.
HEADS = list(deberta_lite.AUTO_CLASSES.items())


def _outputs(model):
    input_ids, attention_mask = padded_batch()
    if isinstance(model, DebertaLiteForMultipleChoice):
        input_ids, attention_mask = input_ids[:2].view(1, 2, 12), attention_mask[:2].view(1, 2, 12)
    out = model.eval()(input_ids, attention_mask=attention_mask)
    return [value for value in out.to_tuple() if isinstance(value, torch.Tensor)]


def test_every_head_is_registered():
    # The table is complete: every model class the modeling file defines is in it.
    defined = {
        value
        for value in vars(modeling_deberta_lite).values()
        if isinstance(value, type)
        and issubclass(value, PreTrainedModel)
        and value.__module__ == modeling_deberta_lite.__name__
    } - {DebertaLitePreTrainedModel}
    assert {model_class for _, model_class in HEADS} == defined
    assert {name for name in deberta_lite.__all__ if name.startswith("DebertaLite")} == {
        cls.__name__ for cls in defined | {DebertaLitePreTrainedModel, DebertaLiteConfig}
    }
    assert isinstance(AutoConfig.for_model("deberta-lite"), DebertaLiteConfig)
    for auto_class, model_class in HEADS:
        assert isinstance(auto_class.from_config(tiny_config()), model_class)


@pytest.mark.parametrize("auto_class, model_class", HEADS, ids=[model.__name__ for _, model in HEADS])
def test_save_load_round_trip_is_bit_identical(auto_class, model_class, tmp_path):
    model = model_class(tiny_config(conv_kernel_size=3, type_vocab_size=2))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    loaded = auto_class.from_pretrained(tmp_path)  # in-process: no trust_remote_code needed
    assert type(loaded) is model_class
    for before, after in zip(_outputs(model), _outputs(loaded), strict=True):
        assert torch.equal(before, after)


def test_saved_directory_carries_remote_code_and_full_auto_map(tmp_path):
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "deberta-lite"
    assert config["auto_map"] == AUTO_MAP
    for class_path in AUTO_MAP.values():
        module, _ = class_path.split(".")
        assert (tmp_path / f"{module}.py").exists()
    # The modules the modeling file imports relatively travel with it.
    for module in ("attention", "internals"):
        assert (tmp_path / f"{module}.py").read_text() == (ROOT / "deberta_lite" / f"{module}.py").read_text()
    modeling_source = (tmp_path / "modeling_deberta_lite.py").read_text()
    assert "from .configuration_deberta_lite import" in modeling_source and "deberta_lite." not in modeling_source


# Run where deberta_lite cannot be imported (helpers.run_python blocks it): only the remote code can load the models.
REMOTE_SCRIPT = """
    import sys

    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                              AutoModelForSequenceClassification)
    directory, mlm_directory, rtd_directory, inputs_path, outputs_path = sys.argv[1:6]
    inputs = torch.load(inputs_path)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    assert type(config).__name__ == "DebertaLiteConfig", type(config)
    assert not type(config).__module__.startswith("deberta_lite"), type(config).__module__
    base = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    head = AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True).eval()
    assert type(head).__name__ == "DebertaLiteForSequenceClassification"
    mlm = AutoModelForMaskedLM.from_pretrained(mlm_directory, trust_remote_code=True).eval()
    assert type(mlm).__name__ == "DebertaLiteForMaskedLM"
    rtd = AutoModelForPreTraining.from_pretrained(rtd_directory, trust_remote_code=True).eval()
    assert type(rtd).__name__ == "DebertaLiteForReplacedTokenDetection"
    with torch.no_grad():
        torch.save({"base": base(**inputs).last_hidden_state, "logits": head(**inputs).logits,
                    "mlm": mlm(**inputs).logits, "rtd": rtd(**inputs).logits}, outputs_path)
"""


def test_remote_code_loads_where_deberta_lite_cannot_be_imported(tmp_path):
    model = DebertaLiteForSequenceClassification(tiny_config(num_labels=3)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    mlm = DebertaLiteForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    rtd = DebertaLiteForReplacedTokenDetection(tiny_config()).eval()  # the DeBERTa-v3 discriminator
    rtd.save_pretrained(tmp_path / "rtd")
    input_ids, attention_mask = padded_batch()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = run_python(
        REMOTE_SCRIPT,
        env,
        tmp_path,
        tmp_path / "checkpoint",
        tmp_path / "mlm",
        tmp_path / "rtd",
        tmp_path / "inputs.pt",
        tmp_path / "outputs.pt",
        without_deberta_lite=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        assert torch.equal(outputs["logits"], model(**inputs).logits)
        assert torch.equal(outputs["base"], model.deberta(**inputs).last_hidden_state)
        assert torch.equal(outputs["mlm"], mlm(**inputs).logits)
        assert torch.equal(outputs["rtd"], rtd(**inputs).logits)
