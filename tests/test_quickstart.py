import importlib.util

from conftest import ROOT


def test_quickstart_runs_and_matches_debertav2(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    difference = quickstart.main(["--output_dir", str(tmp_path)])
    assert difference < 1e-5
    assert "identical to the saved model: True" in capsys.readouterr().out
    assert (tmp_path / "deberta-lite" / "model.safetensors").exists()
    assert (tmp_path / "deberta-v2" / "config.json").exists()
