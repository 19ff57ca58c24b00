from conftest import load_script


def test_quickstart_runs_and_matches_debertav2(tmp_path, capsys):
    quickstart = load_script("quickstart")
    difference = quickstart.main(["--output_dir", str(tmp_path)])
    assert difference < 1e-5
    assert "identical to the saved model: True" in capsys.readouterr().out
    assert (tmp_path / "deberta-lite" / "model.safetensors").exists()
    assert (tmp_path / "deberta-v2" / "config.json").exists()
