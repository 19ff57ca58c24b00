"""The benchmark script runs and fills its table (speed itself is never asserted in tests)."""

import json

from helpers import load_script


def test_benchmark_script_on_a_small_model(tmp_path):
    rows = load_script("benchmark").main(
        [
            "--size",
            "tiny",
            "--shapes",
            "1x64",
            "--lean_shapes",
            "1x128",
            "--train_shapes",
            "2x32",
            "--repeats",
            "1",
            "--output",
            str(tmp_path / "bench.json"),
        ]
    )
    models = {"deberta_lite", "deberta_lite_chunked", "transformers_debertav2", "bert_sdpa"}
    assert {r["model"] for r in rows if r["shape"] == "1x64"} == models
    assert {r["model"] for r in rows if r["shape"] == "1x128"} == models - {"transformers_debertav2"}
    assert {r["kind"] for r in rows} == {"forward", "train step"}
    # Every row is complete and timed; the memory peak is a measurement with no value to check against.
    assert all(set(r) == {"shape", "kind", "model", "seconds", "peak_bytes"} and r["seconds"] > 0 for r in rows)
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == rows
