"""The benchmark script runs and fills its table, plots, compares peers and profiles one layer (speed itself is never
asserted in tests)."""

import importlib.util
import json
import sys

import pytest
import torch

from deberta_lite import DebertaLiteModel

from helpers import load_script, tiny_config


HAS_DISENTANGLED_FLASH = importlib.util.find_spec("disentangled_flash") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PEER = "debertav2_disentangled_flash"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_run(tmp_path, *extra):
    return load_script("benchmark").main(
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
            *extra,
        ]
    )


def test_benchmark_script_on_a_small_model(tmp_path):
    rows = tiny_run(tmp_path)
    models = {"deberta_lite", "deberta_lite_chunked", "transformers_debertav2", "bert_sdpa"}
    peers = {PEER} if HAS_DISENTANGLED_FLASH else set()
    assert {r["model"] for r in rows if r["shape"] == "1x64"} == models | peers
    # The lean shapes run DeBERTa-lite and BERT only.
    assert {r["model"] for r in rows if r["shape"] == "1x128"} == models - {"transformers_debertav2"}
    assert {r["kind"] for r in rows} == {"forward", "train step"}
    # Every row is complete and timed; the memory peak is a measurement with no value to check against.
    keys = {"shape", "kind", "model", "seconds", "peak_bytes"}
    assert all(set(r) == keys | ({"max_abs_diff"} if r["model"] in peers else set()) for r in rows)
    assert all(r["seconds"] > 0 for r in rows)
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == rows


@pytest.mark.skipif(not HAS_DISENTANGLED_FLASH, reason="disentangled-flash is not installed (the bench extra)")
def test_disentangled_flash_column(tmp_path, capsys):
    rows = tiny_run(tmp_path)
    peer_rows = [r for r in rows if r["model"] == PEER]
    # Padded, forward and train step; never in the lean shapes, where there is no DebertaV2 to check it against.
    assert [(r["kind"], r["shape"]) for r in peer_rows] == [("forward", "1x64"), ("train step", "2x32")]
    # Same weights as DebertaV2, so the same outputs (its PyTorch backend on a CPU).
    assert all(0 <= r["max_abs_diff"] < 1e-4 for r in peer_rows)
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["peers"] == {
        PEER: f"disentangled-flash {importlib.metadata.version('disentangled-flash')}, torch backend"
    }
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("| step |"))
    assert "| DebertaV2 + disentangled-flash |" in header and "| DebertaV2 + disentangled-flash / lite |" in header
    forward_line = next(line for line in table if line.startswith("| forward | 1x64 |"))
    assert forward_line.count("|") == header.count("|") and "—" not in forward_line


def test_a_peer_that_disagrees_is_reported(capsys):
    benchmark = load_script("benchmark")
    reference = torch.zeros(2, 3)
    output = reference.clone()
    output[1, 2] = 0.25
    assert benchmark.check_peer(PEER, output, "transformers_debertav2", reference, "fp32") == 0.25
    assert "WARNING: DebertaV2 + disentangled-flash differs from transformers DebertaV2 by up to 0.25" in (
        capsys.readouterr().out
    )
    # A NaN is no agreement either; within the tolerance nothing is printed.
    benchmark.check_peer(PEER, torch.full((2, 3), float("nan")), "transformers_debertav2", reference, "fp32")
    assert "WARNING" in capsys.readouterr().out
    assert benchmark.check_peer(PEER, reference + 1e-6, "transformers_debertav2", reference, "fp32") < 1e-4
    assert capsys.readouterr().out == ""


def test_flex_sits_out_train_steps_with_attention_dropout(capsys):
    benchmark = load_script("benchmark")
    for dropout, expected in ((0.1, ["deberta_lite"]), (0.0, ["deberta_lite", "deberta_lite_flex"])):
        models = {name: DebertaLiteModel(tiny_config(attention_probs_dropout_prob=dropout)) for name in expected[:1]}
        models["deberta_lite_flex"] = DebertaLiteModel(tiny_config(attention_probs_dropout_prob=dropout))
        assert benchmark.train_step_models(models) == expected
    assert capsys.readouterr().out.count("No train step for DeBERTa-lite flex") == 1


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        image.verify()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (the bench extra)")
def test_plot_and_redraw_from_json(tmp_path, capsys):
    rows = tiny_run(tmp_path, "--plot", str(tmp_path / "plot.png"))
    assert_png(tmp_path / "plot.png")
    table = capsys.readouterr().out.split("\n\n")[-1].split("plot written")[0]
    # Re-drawn from the JSON: the same rows and table, no model built.
    benchmark = load_script("benchmark")
    again = benchmark.main(["--from_json", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "again.png")])
    assert again == rows
    assert_png(tmp_path / "again.png")
    assert table.strip() in capsys.readouterr().out


def test_plot_without_matplotlib_fails_when_parsing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    benchmark = load_script("benchmark")
    monkeypatch.setattr(benchmark, "build_models", None)  # nothing may be built before the error
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--size", "tiny", "--plot", str(tmp_path / "plot.png")])
    assert exit_info.value.code == 2
    assert 'pip install "deberta-lite[bench]"' in capsys.readouterr().err
    assert not (tmp_path / "plot.png").exists()


def test_profile_rules_by_name_and_shape():
    benchmark = load_script("benchmark")
    config = benchmark.load_config("tiny")  # H 32, I 64, 4 heads of 8
    shapes = benchmark.LayerShapes(2, 48, config, relative_rows=49)
    rule = shapes.rule
    assert rule("aten::addmm", [[32], [96, 32], [32, 32]]) == "projections and FFN"
    assert rule("aten::mm", [[32, 96], [96, 64]]) == "projections and FFN"  # a weight gradient
    assert rule("aten::gelu", [[2, 48, 64], []]) == "projections and FFN"
    assert rule("aten::matmul", [[2, 4, 48, 8], [4, 8, 49]]) == "relative tables"
    assert rule("aten::addmm", [[32], [49, 32], [32, 32]]) == "relative tables"
    assert rule("aten::gather", [[2, 4, 48, 49], [], [2, 4, 48, 48]]) == "index/gather"
    assert rule("aten::add_", [[2, 4, 48, 48], [2, 4, 48, 48], []]) == "bias assembly"
    assert rule("aten::transpose", [[2, 4, 48, 16], [], []]) == "bias assembly"  # a p2c block of 16 rows
    assert rule("aten::native_layer_norm", [[2, 48, 32], [], [32], [32], []]) == "layer norm"
    assert rule("aten::_softmax", [[2, 4, 48, 48], [], []]) == "softmax"
    # Per-head queries and keys and the c2p table are not bias; a residual add is nothing in particular.
    assert rule("aten::add", [[2, 4, 48, 8], [2, 4, 48, 8], []]) is None
    assert rule("aten::copy_", [[2, 4, 48, 49], [2, 4, 48, 49], []]) is None
    assert rule("aten::add", [[2, 48, 32], [2, 48, 32], []]) is None
    assert benchmark.LayerShapes(2, 48, config, relative_rows=None).rule("aten::bmm", [[8, 48, 49]]) is None


def test_profile_of_one_layer(tmp_path, capsys):
    profiles = load_script("benchmark").main(
        [
            "--size",
            "tiny",
            "--profile",
            "--profile_shapes",
            "2x48",
            "--repeats",
            "1",
            "--output",
            str(tmp_path / "p.json"),
        ]
    )
    assert [(p["model"], p["shape"]) for p in profiles] == [("DeBERTa-lite", "2x48"), ("BERT", "2x48")]
    lite, bert = profiles
    assert lite["relative_rows"] == 49 and bert["relative_rows"] is None  # tiny: 32 buckets, 48 tokens
    for result in profiles:
        forward, backward = result["milliseconds"]["forward"], result["milliseconds"]["backward"]
        # Every event counted once: the categories add up to the profiler's own total.
        assert sum(forward.values()) + sum(backward.values()) == pytest.approx(result["profiler_total_ms"], rel=1e-6)
        for category in ("attention kernel", "projections and FFN", "layer norm"):
            assert forward[category] > 0 and backward[category] > 0, category
        # Training with attention dropout: SDPA on a CPU takes its math path.
        assert "aten::_scaled_dot_product_attention_math" in result["attention_ops"]
        assert result["top_ops"] and all(op["op"].startswith("aten::") for op in result["top_ops"])
    for category in ("relative tables", "index/gather", "bias assembly"):
        assert lite["milliseconds"]["forward"][category] > 0 and lite["milliseconds"]["backward"][category] > 0
        assert bert["milliseconds"]["forward"][category] == bert["milliseconds"]["backward"][category] == 0
    assert json.loads((tmp_path / "p.json").read_text())["profiles"] == profiles
    out = capsys.readouterr().out
    assert "### DeBERTa-lite layer, 2x48, one training step (49 relative rows)" in out
    assert "| attention kernel (_scaled_dot_product_attention_math" in out


def test_profile_recomputed_blocks_keep_their_categories():
    """The chunked kernel checkpoints its blocks: their gathers run again in the backward pass, under autograd nodes
    that mirror attention ops, and still count as gathers."""
    benchmark = load_script("benchmark")
    config = benchmark.load_config("tiny")
    model = DebertaLiteModel(config)
    model.set_attn_implementation("deberta_chunked")
    layer = model.layers[0].train()
    hidden_states = torch.randn(2, 48, config.hidden_size, requires_grad=True)
    relative, rel_embeddings = model.relative_inputs(48, hidden_states.device)
    with torch.profiler.profile(record_shapes=True) as profiler:
        layer(hidden_states, None, relative, rel_embeddings.detach()).sum().backward()
    shapes = benchmark.LayerShapes(2, 48, config, rel_embeddings.shape[0])
    gathers = [
        (category, backward)
        for event, category, backward in benchmark.classify_events(profiler.events(), shapes)
        if event.name == "aten::gather"
    ]
    assert {backward for _, backward in gathers} == {False, True}  # run in the forward pass and recomputed
    assert {category for category, _ in gathers} == {"index/gather"}
