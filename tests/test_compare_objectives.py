"""scripts/compare_objectives.py: the equal-time budget in steps, and a smoke run of every objective."""

import json
import math

import pytest

from helpers import DATA, load_script


compare_objectives = load_script("compare_objectives")


def small_run_args(tmp_path, train_lines: int, validation_lines: int, *extra) -> list[str]:
    """A tiny run on the first lines of the bundled wiki corpus (written to tmp_path), fine-tuned on trec_sample."""
    corpus = (DATA / "wiki_sample" / "train.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.txt").write_text("\n".join(corpus[:train_lines]), encoding="utf-8")
    validation = corpus[train_lines : train_lines + validation_lines]
    (tmp_path / "validation.txt").write_text("\n".join(validation), encoding="utf-8")
    return [
        "--train_file", str(tmp_path / "train.txt"),
        "--validation_file", str(tmp_path / "validation.txt"),
        "--vocab_size", "400",
        "--config_name", str(DATA.parent / "configs" / "tiny.json"),
        "--max_seq_length", "64",
        "--batch_size", "8",
        "--tasks", "trec_sample",
        "--seeds", "0",
        "--output_dir", str(tmp_path / "out"),
        *extra,
    ]  # fmt: skip


def test_steps_for_budget():
    assert compare_objectives.steps_for_budget(150, 0.4) == 375
    assert compare_objectives.steps_for_budget(10, 3.0) == 3  # whole steps that fit, not rounded up
    assert compare_objectives.steps_for_budget(1, 5.0) == 1  # a budget shorter than a step still trains once
    with pytest.raises(ValueError, match="positive"):
        compare_objectives.steps_for_budget(0, 0.5)


def test_spread():
    assert compare_objectives.spread([0.5, 0.7, 0.6]) == pytest.approx(
        {"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7}
    )
    assert compare_objectives.spread([0.25]) == {"mean": 0.25, "std": 0.0, "min": 0.25, "max": 0.25}


def test_smoke_every_objective(tmp_path):
    objectives = list(compare_objectives.OBJECTIVES)
    budget_s, calibration_steps = 2.0, 2
    results = compare_objectives.main(
        small_run_args(tmp_path, 300, 60, "--finetune_max_steps", "2")
        + [
            "--objectives", *objectives,
            "--budget_s", str(budget_s),
            "--calibration_steps", str(calibration_steps),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert set(saved["pretraining"]) == set(objectives)
    for objective in objectives:
        pretraining = saved["pretraining"][objective]
        # The run trained exactly the steps its budget bought, and evaluated.
        state = json.loads((tmp_path / "out" / objective / "trainer_state.json").read_text())
        assert state["global_step"] == pretraining["steps"] >= 1
        assert math.isfinite(pretraining["eval"]["eval_loss"])
        finetuned = saved["finetuning"][f"{objective} / trec_sample"]
        assert len(finetuned["per_seed"]) == 1
        assert all(math.isfinite(finetuned[name][stat]) for name in ("accuracy", "f1") for stat in ("mean", "std"))
        assert 0 <= finetuned["accuracy"]["mean"] <= 1
        assert compare_objectives.OBJECTIVES[objective][0] in table
    assert saved == json.loads(json.dumps(results))


def test_equal_steps_with_documents_packed_apart(tmp_path):
    compare_objectives.main(
        small_run_args(tmp_path, 200, 40, "--finetune_max_steps", "1")
        + ["--objectives", "mlm", "mlm_documents", "--steps", "3"]
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["pretraining"]
    for objective in ("mlm", "mlm_documents"):
        state = json.loads((tmp_path / "out" / objective / "trainer_state.json").read_text())
        assert saved[objective]["steps"] == state["global_step"] == 3
    assert not (tmp_path / "out" / "calibration").exists()  # equal steps: nothing timed
    # The two packings differ: their validation rows (and so their losses) are not the same.
    assert saved["mlm"]["eval"]["eval_loss"] != saved["mlm_documents"]["eval"]["eval_loss"]
