"""ONNX export: onnxruntime equals PyTorch at several shapes, including lengths longer than the traced one."""

import pytest
import torch

from deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification, DebertaLiteModel
from deberta_lite.export import check_onnx, export_onnx

from conftest import load_script, tiny_config


pytest.importorskip("onnxruntime")  # part of the dev extras, so `make test` always runs these

SHAPES = ((1, 5), (2, 16), (3, 40), (2, 120))  # traced at 2 x 16


@pytest.mark.parametrize("model_class, overrides", [
    (DebertaLiteForSequenceClassification, dict(num_labels=3)),
    (DebertaLiteForSequenceClassification, dict(num_labels=1, type_vocab_size=2, conv_kernel_size=3)),
    (DebertaLiteForMaskedLM, dict()),
])
def test_onnx_runtime_matches_pytorch(tmp_path, model_class, overrides):
    torch.manual_seed(0)
    model_class(tiny_config(max_position_embeddings=128, **overrides)).save_pretrained(tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    assert check_onnx(tmp_path / "model", path, shapes=SHAPES) < 1e-4


def test_script_exports_and_checks(tmp_path):
    torch.manual_seed(0)
    DebertaLiteForSequenceClassification(tiny_config()).save_pretrained(tmp_path / "model")
    export = load_script("export_onnx")
    difference = export.main(["--model_name_or_path", str(tmp_path / "model"), "--output", str(tmp_path / "m.onnx")])
    assert difference < 1e-4 and (tmp_path / "m.onnx").exists()
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path / "encoder")
    with pytest.raises(SystemExit, match="cannot tell the task"):
        export.main(["--model_name_or_path", str(tmp_path / "encoder"), "--output", str(tmp_path / "x.onnx")])
