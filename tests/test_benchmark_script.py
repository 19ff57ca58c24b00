"""The benchmark script runs and fills its table, plots, compares peers and profiles one layer (speed itself is never
asserted in tests)."""

import importlib.util
import json
import sys

import pytest
import torch

from deberta_lite import DebertaLiteModel

from helpers import DATA, load_script, tiny_config


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


def varlen_file(tmp_path):
    """A TSV of 32 sentences of 1 to 31 words, in a scrambled order, for batches of 4."""
    path = tmp_path / "texts.tsv"
    words = "the quick brown fox jumps over a lazy dog".split()
    texts = [" ".join(words[j % len(words)] for j in range((7 * i) % 31 + 1)) for i in range(32)]
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t0\n" for text in texts))
    return path, texts


def test_varlen_batches(tmp_path, capsys):
    from deberta_lite.tokenization import tokenizer_from_spm

    path, texts = varlen_file(tmp_path)
    argv = ["--size", "tiny", "--varlen", str(path), "--varlen_batch_size", "4", "--varlen_batches", "2"]
    argv += ["--varlen_train", "--repeats", "1", "--output", str(tmp_path / "varlen.json")]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(tmp_path / "varlen.png")]
    rows = load_script("benchmark").main(argv)
    results = json.loads((tmp_path / "varlen.json").read_text())
    assert results["mode"] == "varlen" and results["rows"] == rows

    padded = {"transformers_debertav2", "bert_sdpa", "deberta_lite_padded", "modernbert"}
    peers = {PEER, PEER + "_packed"} if HAS_DISENTANGLED_FLASH else set()
    grouped = {"deberta_lite_unpadded", "deberta_lite_padded"}
    for kind in ("forward", "train step"):
        assert {r["model"] for r in rows if r["batches"] == "random" and r["kind"] == kind} == padded | peers | grouped
        assert {r["model"] for r in rows if r["batches"] == "grouped" and r["kind"] == kind} == grouped

    # Real tokens and padding of the sampled batches, by hand from the bundled tokenizer's lengths.
    lengths = [len(ids) for ids in tokenizer_from_spm(DATA / "spm" / "unigram_1000.model")(texts)["input_ids"]]
    padding = {}
    for sampling, summary in results["samplings"].items():
        batches = summary["rows"]
        assert len(batches) == 2 and all(len(batch) == 4 for batch in batches)
        assert len({i for batch in batches for i in batch}) == 8  # distinct rows
        real = sum(lengths[i] for batch in batches for i in batch)
        full = sum(4 * max(lengths[i] for i in batch) for batch in batches)
        padding[sampling] = 1 - real / full
        assert summary["real_tokens"] == real and summary["padded_tokens"] == full
        for r in rows:
            if r["batches"] == sampling:
                assert r["real_tokens"] == real and r["padding_fraction"] == pytest.approx(padding[sampling])
                assert r["tokens_per_s"] == pytest.approx(real / r["seconds"]) and r["tokens_per_s"] > 0
    # Sorting megabatches of 12 rows by length leaves less padding than random draws here.
    assert padding["grouped"] < padding["random"]

    # DeBERTa-lite unpadded checked against padded, the peers against DebertaV2, at the real tokens of every batch.
    for r in rows:
        expected = {"deberta_lite_unpadded": "deberta_lite_padded", PEER: "transformers_debertav2"}
        expected[PEER + "_packed"] = "transformers_debertav2"
        assert r.get("reference") == expected.get(r["model"])
        if "reference" in r:
            assert 0 <= r["max_abs_diff"] < 1e-4
    out = capsys.readouterr().out
    assert "Token ids folded into the tiny config's 128-entry vocabulary" in out
    assert "WARNING" not in out
    assert "| random | forward | BertModel (sdpa) | padded |" in out
    bert_row = next(line for line in out.splitlines() if line.startswith("| random | train step | BertModel (sdpa) |"))
    assert "| 1.00× |" in bert_row
    if HAS_MATPLOTLIB:
        assert_png(tmp_path / "varlen.png")
        again = load_script("benchmark").main(["--from_json", str(tmp_path / "varlen.json")])
        assert again == rows and bert_row in capsys.readouterr().out


def test_varlen_profile(tmp_path, capsys):
    """--varlen with --profile: DeBERTa-lite unpadded and BertModel padded, each op's self time in one group."""
    benchmark = load_script("benchmark")
    path, _ = varlen_file(tmp_path)
    argv = ["--size", "tiny", "--varlen", str(path), "--varlen_batch_size", "4", "--varlen_batches", "2"]
    argv += ["--varlen_train", "--profile", "--output", str(tmp_path / "profile.json")]
    profiles = benchmark.main(argv)
    assert [(p["kind"], p["model"]) for p in profiles] == [
        (kind, model) for kind in ("forward", "train step") for model in ("deberta_lite_unpadded", "bert_sdpa")
    ]
    projections = "projections and FFN (addmm, mm)"
    indexing = "index, gather, scatter (unpadding, bias lookup, their backward)"
    for result in profiles:
        assert set(result["groups"]) == {*benchmark.OP_GROUPS, "attention kernel", "other"}
        assert result["groups"][projections] > 0 and result["groups"]["attention kernel"] > 0
        milliseconds = [op["ms"] for op in result["top_ops"]]
        assert milliseconds == sorted(milliseconds, reverse=True) and milliseconds[0] > 0
    # Unpadding gathers the real tokens (and scatters their gradient back); BERT's padded forward gathers only its
    # embeddings.
    assert profiles[0]["groups"][indexing] > 0
    out = capsys.readouterr().out
    assert "| forward: op group | DeBERTa-lite unpadded | BertModel (sdpa) |" in out
    assert benchmark.main(["--from_json", str(tmp_path / "profile.json")]) == profiles
    assert benchmark.op_group("aten::addmm") == projections
    assert benchmark.op_group("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention kernel"
    assert benchmark.op_group("aten::scaled_dot_product_attention") == "other"  # the dispatcher's own self time
    assert benchmark.op_group("aten::bernoulli_") == "dropout masks"


def test_varlen_relative_times():
    benchmark = load_script("benchmark")
    row = dict(batches="random", kind="forward", seconds=1.0, peak_bytes=0, real_tokens=1, padding_fraction=0.5)
    rows = [
        {**row, "model": "bert_sdpa", "tokens_per_s": 1000.0},
        {**row, "model": "debertav2_disentangled_flash_packed", "tokens_per_s": 250.0},
        {**row, "model": "deberta_lite_unpadded", "tokens_per_s": 500.0},
        {**row, "batches": "grouped", "model": "deberta_lite_padded", "tokens_per_s": 800.0},
        {**row, "kind": "train step", "model": "deberta_lite_padded", "tokens_per_s": 100.0},
    ]
    relative = benchmark.relative_times({"rows": rows})
    # Time relative to a baseline: its tokens per second over the row's, on the random batches of the same step.
    assert relative[("random", "forward", "deberta_lite_unpadded")] == {
        "bert_sdpa": 2.0,
        "debertav2_disentangled_flash_packed": 0.5,
    }
    assert relative[("grouped", "forward", "deberta_lite_padded")] == {
        "bert_sdpa": 1.25,
        "debertav2_disentangled_flash_packed": 0.3125,
    }
    assert relative[("random", "train step", "deberta_lite_padded")] == {}  # no baseline measured for train steps


def test_emd_masked_only_against_all_positions(tmp_path, capsys):
    rows = load_script("benchmark").main(
        ["--size", "tiny", "--emd_shapes", "2x48", "--repeats", "1", "--output", str(tmp_path / "emd.json")]
    )
    assert [(r["kind"], r["variant"]) for r in rows] == [
        ("EMD forward+backward", "all positions"),
        ("EMD forward+backward", "masked only"),
        ("MLM train step", "all positions"),
        ("MLM train step", "masked only"),
    ]
    for full, masked in (rows[:2], rows[2:]):
        assert full["seconds"] > 0 and masked["speedup"] == full["seconds"] / masked["seconds"]
        assert 0 < masked["masked_fraction"] < 0.5
    # The masked-only decoder's output equals the full one's at the masked positions.
    assert 0 <= rows[1]["max_abs_diff"] < 1e-4
    results = json.loads((tmp_path / "emd.json").read_text())
    assert results["mode"] == "emd" and results["rows"] == rows
    out = capsys.readouterr().out
    assert f"| 2x48 | MLM train step | {rows[2]['seconds']:.3f} s" in out and f"| {rows[3]['speedup']:.2f}× |" in out


def test_separate_modes_cannot_be_combined(tmp_path, capsys):
    benchmark = load_script("benchmark")
    for argv in (["--varlen", "x.tsv", "--emd_shapes", "8x512"], ["--profile", "--emd_shapes", "8x512"]):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(argv)
        assert exit_info.value.code == 2
    assert "are separate runs: pick one" in capsys.readouterr().err


def test_varlen_text_columns(tmp_path):
    benchmark = load_script("benchmark")
    (tmp_path / "pairs.tsv").write_text("sentence1\tsentence2\tlabel\na b\tc\t0\n\t\t1\nd\te f\t1\n")
    assert benchmark.varlen_texts(tmp_path / "pairs.tsv", None) == [["a b", "d"], ["c", "e f"]]
    assert benchmark.varlen_texts(tmp_path / "pairs.tsv", ["sentence2"]) == [["c", "e f"]]
    (tmp_path / "lines.txt").write_text("first line\n\nsecond line\n")
    assert benchmark.varlen_texts(tmp_path / "lines.txt", None) == [["first line", "second line"]]
    (tmp_path / "numbers.csv").write_text("id,score\n1,2\n")
    with pytest.raises(ValueError, match="no text column among \\['id', 'score'\\]: name one with --varlen_column"):
        benchmark.varlen_texts(tmp_path / "numbers.csv", None)
    with pytest.raises(ValueError, match="--varlen_column takes one or two of the columns"):
        benchmark.varlen_texts(tmp_path / "pairs.tsv", ["sentence"])
