"""ONNX export of every head: onnxruntime equals PyTorch at several shapes, including lengths longer than the traced
one, for every output the head returns."""

import json

import pytest
import torch

from deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
)
from deberta_lite.export import TASKS, check_onnx, export_onnx

from helpers import load_script, tiny_config


pytest.importorskip("onnxruntime")  # part of the dev extras, so `make test` always runs these

SHAPES = ((1, 5), (2, 16), (3, 40), (2, 120))  # traced at 2 x 16
CHOICE_SHAPES = ((1, 2, 5), (2, 4, 16), (3, 3, 40), (2, 2, 120))  # traced at 2 x 3 x 16
CASES = [  # task, head, config overrides, output names
    ("text-classification", DebertaLiteForSequenceClassification, dict(num_labels=3), ["logits"]),
    (
        "text-classification",
        DebertaLiteForSequenceClassification,
        dict(num_labels=1, type_vocab_size=2, conv_kernel_size=3),
        ["logits"],
    ),
    ("fill-mask", DebertaLiteForMaskedLM, dict(), ["logits"]),
    ("token-classification", DebertaLiteForTokenClassification, dict(num_labels=5), ["logits"]),
    ("question-answering", DebertaLiteForQuestionAnswering, dict(type_vocab_size=2), ["start_logits", "end_logits"]),
    ("multiple-choice", DebertaLiteForMultipleChoice, dict(type_vocab_size=2), ["logits"]),
    ("feature-extraction", DebertaLiteModel, dict(position_biased_input=True), ["last_hidden_state"]),
]


def test_every_task_is_tested():
    assert {case[0] for case in CASES} == set(TASKS)


@pytest.mark.parametrize(
    "task, model_class, overrides, outputs", CASES, ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)]
)
def test_onnx_runtime_matches_pytorch(tmp_path, task, model_class, overrides, outputs):
    torch.manual_seed(0)
    model_class(tiny_config(max_position_embeddings=128, **overrides)).save_pretrained(tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx")  # the task comes from the architecture
    differences = check_onnx(tmp_path / "model", path, shapes=CHOICE_SHAPES if task == "multiple-choice" else SHAPES)
    assert list(differences) == outputs
    assert max(differences.values()) < 1e-4


def test_script_exports_and_checks(tmp_path, capsys):
    torch.manual_seed(0)
    DebertaLiteForQuestionAnswering(tiny_config()).save_pretrained(tmp_path / "model")
    export = load_script("export_onnx")
    difference = export.main(
        [
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--output",
            str(tmp_path / "m.onnx"),
            "--task",
            "question-answering",
        ]
    )
    assert difference < 1e-4 and (tmp_path / "m.onnx").exists()
    printed = capsys.readouterr().out
    assert "start_logits" in printed and "end_logits" in printed
    # A checkpoint whose config names no architecture needs --task.
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path / "encoder")
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="cannot tell the task"):
        export.main(["--model_name_or_path", str(tmp_path / "encoder"), "--output", str(tmp_path / "x.onnx")])
