"""GLUE-style fine-tuning: metrics against hand-computed values, data errors, and short runs on real data."""

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DebertaV2ForMaskedLM, pipeline

from deberta_lite import DebertaLiteForMaskedLM
from deberta_lite.finetuning import GLUE_TASKS, load_local_task, task_metrics

from helpers import DATA, classifier_prediction, load_script, tiny_config, v2_config


finetune_glue = load_script("finetune_glue")


# ---------------------------------------------------------------- metrics


def test_binary_metrics_by_hand():
    predictions, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 0, 0])
    # TP 2, TN 2, FP 2, FN 0: accuracy 4/6, precision 1/2, recall 1, F1 2/3, MCC (2*2 - 2*0) / sqrt(4*2*4*2) = 1/2
    assert task_metrics(("accuracy", "f1"), predictions, labels) == pytest.approx(
        {"accuracy": 4 / 6, "f1": 2 / 3, "combined_score": (4 / 6 + 2 / 3) / 2}
    )
    assert task_metrics(("matthews_correlation",), predictions, labels) == pytest.approx({"matthews_correlation": 0.5})


def test_multiclass_f1_is_macro_by_hand():
    # class 0: F1 1; class 1: P 1, R 1/2, F1 2/3; class 2: P 1/2, R 1, F1 2/3
    result = task_metrics(("accuracy", "f1"), np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert result["accuracy"] == pytest.approx(0.75) and result["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_metrics_by_hand():
    predictions, labels = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 9.0])
    # deviations (-1.5, -.5, .5, 1.5) and (-3.25, -1.25, .75, 3.75): r = 11.5 / sqrt(5 * 26.75); ranks agree
    pearson = 11.5 / np.sqrt(5 * 26.75)
    assert task_metrics(("pearson", "spearmanr"), predictions, labels) == pytest.approx(
        {"pearson": pearson, "spearmanr": 1.0, "combined_score": (pearson + 1.0) / 2}
    )


def test_glue_tasks_cover_every_task_with_server_file_names():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "ax"}
    files = {name for spec in GLUE_TASKS.values() for name in spec.submission_files.values()}
    assert files == {
        "CoLA.tsv",
        "SST-2.tsv",
        "MRPC.tsv",
        "STS-B.tsv",
        "QQP.tsv",
        "MNLI-m.tsv",
        "MNLI-mm.tsv",
        "QNLI.tsv",
        "RTE.tsv",
        "WNLI.tsv",
        "AX.tsv",
    }
    assert GLUE_TASKS["mnli"].evaluation_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["cola"].main_metric == "matthews_correlation"


# ---------------------------------------------------------------- data errors


def _write(path, rows, delimiter="\t"):
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return str(path)


def test_data_errors_name_the_file_and_column(tmp_path):
    train = _write(tmp_path / "train.tsv", [["sentence", "label"], ["good film", "pos"], ["bad film", "neg"]])
    no_label = _write(tmp_path / "no_label.tsv", [["sentence", "stars"], ["fine", "3"]])
    with pytest.raises(ValueError, match=r"no_label\.tsv.*label column 'label' missing"):
        load_local_task(train, no_label)
    unseen = _write(tmp_path / "unseen.tsv", [["sentence", "label"], ["meh", "neutral"]])
    with pytest.raises(ValueError, match=r"unseen\.tsv.*'label'.*\['neutral'\]"):
        load_local_task(train, unseen)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.tsv is empty"):
        load_local_task(train, str(tmp_path / "empty.tsv"))
    header_only = _write(tmp_path / "header.tsv", [["sentence", "label"]])
    with pytest.raises(ValueError, match=r"header\.tsv has a header but no rows"):
        load_local_task(header_only, None)
    with pytest.raises(ValueError, match=r"text column 'text' missing"):
        load_local_task(train, None, text_columns=("text",))
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_local_task(str(tmp_path / "missing.tsv"), None)


def test_a_train_or_validation_row_without_label_or_text_names_file_line_and_column(tmp_path):
    # Integer labels: the empty one made the column float with a None, which int() refused.
    train = _write(
        tmp_path / "train.tsv",
        [
            ["sentence", "label"],
            ["good film", "1"],
            ["a quoted\nsentence", "0"],
            ["no label here", ""],
            ["bad film", "0"],
        ],
    )
    with pytest.raises(ValueError, match=r"train\.tsv, line 5: no value in column 'label' \(1 row of 4 in the file\)"):
        load_local_task(train, None)
    # String labels, a blank line (skipped) before the rows without text.
    good = _write(tmp_path / "good.tsv", [["sentence", "label"], ["good film", "pos"], ["bad film", "neg"]])
    (tmp_path / "validation.csv").write_text("sentence,label\ngood,pos\n\n,neg\n   ,pos\n")
    with pytest.raises(ValueError, match=r"validation\.csv, line 4: no value in column 'sentence' \(2 rows of 3 in"):
        load_local_task(good, str(tmp_path / "validation.csv"))
    jsonl = tmp_path / "validation.jsonl"
    jsonl.write_text('{"sentence": "good", "label": "pos"}\n{"sentence": "bad", "label": null}\n')
    with pytest.raises(ValueError, match=r"validation\.jsonl, line 2: no value in column 'label'"):
        load_local_task(good, str(jsonl))
    with pytest.raises(ValueError, match=r"train\.tsv, line 5: no value in column 'label'"):
        finetune_glue.main(
            [
                "--model_name_or_path",
                str(tmp_path / "never-loaded"),
                "--output_dir",
                str(tmp_path / "o"),
                "--do_train",
                "--train_file",
                train,
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )
    # A test file may leave labels and text empty: its labels are not used, and every row gets a prediction.
    test = _write(
        tmp_path / "test.tsv", [["sentence", "label"], ["good film", "pos"], ["unlabelled film", ""], ["", ""]]
    )
    data, _ = load_local_task(good, None, test)
    assert data["test"]["sentence"] == ["good film", "unlabelled film", None]
    assert "labels" not in data["test"].column_names and data["train"]["labels"] == [1, 0]


def test_a_row_with_an_extra_field_names_its_line(tmp_path):
    extra = _write(tmp_path / "extra.tsv", [["sentence", "label"], ["good film", "1"], ["bad", "film", "0"]])
    with pytest.raises(ValueError, match=r"could not read .*extra\.tsv as tsv: .*Expected 2 fields in line 3, saw 3"):
        load_local_task(extra, None)


# ---------------------------------------------------------------- short runs on real data


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """A tiny DeBERTa-lite MLM checkpoint with the wiki tokenizer, as pretrain_mlm.py would leave it."""
    directory = tmp_path_factory.mktemp("checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    DebertaLiteForMaskedLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=128)).save_pretrained(
        directory
    )
    tokenizer.save_pretrained(directory)
    return directory


EVAL_SAMPLES = 64


def _run(checkpoint, output_dir, *extra):
    return finetune_glue.main(
        [
            "--model_name_or_path",
            str(checkpoint),
            "--output_dir",
            str(output_dir),
            "--use_cpu",
            "--report_to",
            "none",
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_steps",
            "6",
            "--eval_steps",
            "3",
            "--save_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            str(EVAL_SAMPLES),
            "--learning_rate",
            "1e-3",
            "--disable_tqdm",
            "true",
            "--seed",
            "3",
            *extra,
        ]
    )


def _predictions(path):
    with path.open() as handle:
        return list(csv.reader(handle, delimiter="\t"))


def _files(name):
    """The sample's train and validation files, the validation file also as the test file: predictions for the rows
    evaluated (with --max_predict_samples EVAL_SAMPLES) must give the reported metrics."""
    return [
        "--train_file",
        str(DATA / name / "train.tsv"),
        "--validation_file",
        str(DATA / name / "validation.tsv"),
        "--test_file",
        str(DATA / name / "validation.tsv"),
    ]


def _validation(name, task_name=None, text_columns=None):
    """The task a sample defines and its validation labels, as the run reads them."""
    data, spec = load_local_task(
        str(DATA / name / "train.tsv"),
        str(DATA / name / "validation.tsv"),
        text_columns=text_columns,
        task=GLUE_TASKS.get(task_name),
    )
    return spec, data["validation"]["labels"]


def _metrics_of_predictions(path, spec, labels, prefix="eval") -> dict:
    """The task's metrics over the predictions written to `path` against the labels of the rows predicted (the first
    ones), named as the run reports them."""
    spelling = spec.submission_labels or spec.label_names  # as write_predictions spells them
    written = [row[1] for row in _predictions(path)[1:]]
    predictions = [float(value) for value in written] if spec.is_regression else [spelling.index(v) for v in written]
    metrics = task_metrics(spec.metric_names, np.array(predictions), np.array(labels[: len(predictions)]))
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


def _reported(metrics, expected):
    return {key: metrics[key] for key in expected}


def test_binary_sentiment_as_glue_sst2(checkpoint, tmp_path):
    metrics = _run(
        checkpoint,
        tmp_path,
        "--task_name",
        "sst2",
        *_files("sentiment_sample"),
        "--max_predict_samples",
        str(EVAL_SAMPLES),
    )
    expected = _metrics_of_predictions(tmp_path / "SST-2.tsv", *_validation("sentiment_sample", "sst2"))
    assert list(expected) == ["eval_accuracy"] and _reported(metrics, expected) == expected
    assert "eval_f1" not in metrics
    rows = _predictions(tmp_path / "SST-2.tsv")
    assert rows[0] == ["index", "prediction"] and len(rows) == 1 + EVAL_SAMPLES
    assert {row[1] for row in rows[1:]} <= {"0", "1"}
    assert [row[0] for row in rows[1:]] == [str(i) for i in range(EVAL_SAMPLES)]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    evaluations = [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e]
    assert state["best_metric"] == pytest.approx(max(evaluations))  # best checkpoint by the task's metric
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx(state["best_metric"])
    assert (tmp_path / "README.md").exists()
    # The tokenizer saved with the model truncates to its 128 positions (it came with the default 512).
    assert AutoTokenizer.from_pretrained(checkpoint).model_max_length == 512
    assert AutoTokenizer.from_pretrained(tmp_path).model_max_length == 128


def test_six_string_labels_keep_their_names(checkpoint, tmp_path):
    metrics = _run(checkpoint, tmp_path, *_files("trec_sample"), "--max_predict_samples", str(EVAL_SAMPLES))
    # F1 macro-averaged over the six labels
    expected = _metrics_of_predictions(tmp_path / "test_predictions.tsv", *_validation("trec_sample"))
    assert set(expected) == {"eval_accuracy", "eval_f1", "eval_combined_score"}
    assert _reported(metrics, expected) == expected
    names = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.id2label == dict(enumerate(names)) and model.config.label2id == {
        n: i for i, n in enumerate(names)
    }
    rows = _predictions(tmp_path / "test_predictions.tsv")
    assert len(rows) == 1 + EVAL_SAMPLES and {row[1] for row in rows[1:]} <= set(names)
    (result,) = pipeline("text-classification", model=str(tmp_path))("Who wrote Hamlet ?")
    assert result == pytest.approx(classifier_prediction(tmp_path, "Who wrote Hamlet ?"))


def test_regression_as_glue_stsb(checkpoint, tmp_path):
    metrics = _run(
        checkpoint,
        tmp_path,
        "--task_name",
        "stsb",
        *_files("amazon_reg_sample"),
        "--text_columns",
        "sentence",
        "--max_predict_samples",
        str(EVAL_SAMPLES),
    )
    expected = _metrics_of_predictions(tmp_path / "STS-B.tsv", *_validation("amazon_reg_sample", "stsb", ("sentence",)))
    assert set(expected) == {"eval_pearson", "eval_spearmanr", "eval_combined_score"}
    # The file holds each prediction to 6 significant digits, where the tiny model's close predictions can tie: each
    # tie moves Spearman's correlation by up to about 1.5e-3 (64 rows).
    assert _reported(metrics, expected) == pytest.approx(expected, abs=5e-3)
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"
    rows = _predictions(tmp_path / "STS-B.tsv")
    assert rows[0] == ["index", "prediction"] and len(rows) == 1 + EVAL_SAMPLES
    assert all(np.isfinite(float(row[1])) for row in rows[1:])


def test_sentence_pairs(checkpoint, tmp_path):
    metrics = _run(checkpoint, tmp_path, *_files("plagiarism_pairs"))
    rows = _predictions(tmp_path / "test_predictions.tsv")
    assert len(rows) == 1 + 19 and {row[1] for row in rows[1:]} <= {"0", "1", "2", "3"}  # all 19 validation rows
    expected = _metrics_of_predictions(tmp_path / "test_predictions.tsv", *_validation("plagiarism_pairs"))
    assert set(expected) == {"eval_accuracy", "eval_f1", "eval_combined_score"}
    assert _reported(metrics, expected) == expected


def test_debertav2_checkpoint_is_converted_on_the_fly(checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    v2 = DebertaV2ForMaskedLM(v2_config("v3", vocab_size=len(tokenizer), legacy=False))
    v2.save_pretrained(tmp_path / "v2")
    tokenizer.save_pretrained(tmp_path / "v2")
    metrics = _run(
        tmp_path / "v2", tmp_path / "run", *_files("sentiment_sample"), "--max_predict_samples", str(EVAL_SAMPLES)
    )
    expected = _metrics_of_predictions(tmp_path / "run" / "test_predictions.tsv", *_validation("sentiment_sample"))
    assert _reported(metrics, expected) == expected
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "deberta-lite"
    assert sorted(path.name for path in (tmp_path / "run").iterdir() if path.is_dir()) == [
        "checkpoint-3",
        "checkpoint-6",
    ]

    # Pickled weights only (as Microsoft's releases ship them): read with --allow_pickle alone.
    (tmp_path / "v2" / "model.safetensors").unlink()
    torch.save(v2.state_dict(), tmp_path / "v2" / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"pickled weights \(pytorch_model\.bin\)"):
        _run(tmp_path / "v2", tmp_path / "refused", *_files("sentiment_sample"))
    _run(
        tmp_path / "v2",
        tmp_path / "pickled",
        *_files("sentiment_sample"),
        "--max_predict_samples",
        "10",
        "--allow_pickle",
    )
    pickled, loaded = (json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("pickled", "run"))
    assert pickled["eval_loss"] == pytest.approx(loaded["eval_loss"], abs=1e-6)
    assert pickled["eval_accuracy"] == loaded["eval_accuracy"]


def test_command_line_overrides_the_recipe():
    recipe = json.loads((finetune_glue.RECIPES / "mnli.json").read_text())
    argv = ["--task_name", "mnli", "--output_dir", "x", "--learning_rate", "3e-5"]
    parser = finetune_glue.HfArgumentParser(
        (finetune_glue.ModelArguments, finetune_glue.DataArguments, finetune_glue.TrainingArguments)
    )
    _, data_args, training_args = parser.parse_args_into_dataclasses(finetune_glue.recipe_arguments(argv) + argv)
    assert training_args.learning_rate == 3e-5 != recipe["learning_rate"]
    assert training_args.warmup_steps == recipe["warmup_steps"] and data_args.max_seq_length == 256
    assert training_args.metric_for_best_model == "accuracy" and training_args.load_best_model_at_end


def test_classify_script_on_a_fine_tuned_checkpoint(checkpoint, tmp_path, capsys):
    _run(checkpoint, tmp_path, *_files("sentiment_sample"), "--max_predict_samples", "5")
    sentences = ["a warm and funny film", "a boring mess"]
    results = load_script("classify").main([str(tmp_path), *sentences])
    assert results == [pytest.approx(classifier_prediction(tmp_path, sentence)) for sentence in sentences]
    assert "DebertaLiteForSequenceClassification" in capsys.readouterr().out


def _fake_glue(task_name, load_dataset):
    """An MNLI- or AX-shaped DatasetDict, as nyu-mll/glue has it, built from real sentence pairs. MNLI's test splits
    are its validation splits with the labels hidden (-1, as GLUE's are), so that their predictions give its metrics;
    AX holds every pair."""
    import datasets

    table = load_dataset("csv", data_files=str(DATA / "plagiarism_pairs" / "train.tsv"), delimiter="\t")["train"]
    pairs = {
        "premise": table["sentence1"],
        "hypothesis": table["sentence2"],
        "label": [label % 3 for label in table["label"]],
        "idx": list(range(len(table))),
    }
    unlabelled = {**pairs, "label": [-1] * len(table)}
    if task_name == "ax":
        return datasets.DatasetDict(test=datasets.Dataset.from_dict(unlabelled))
    matched, mismatched = range(20), range(20, 45)
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict(pairs),
        validation_matched=datasets.Dataset.from_dict(pairs).select(matched),
        validation_mismatched=datasets.Dataset.from_dict(pairs).select(mismatched),
        test_matched=datasets.Dataset.from_dict(unlabelled).select(matched),
        test_mismatched=datasets.Dataset.from_dict(unlabelled).select(mismatched),
    )


def test_mnli_reports_matched_and_mismatched_and_ax_predicts_with_it(checkpoint, tmp_path, monkeypatch):
    import deberta_lite.finetuning as finetuning

    requested = []
    original = finetuning.datasets.load_dataset

    def fake_load_dataset(path, name=None, **kwargs):
        requested.append((path, name))
        return _fake_glue(name, original)

    monkeypatch.setattr(finetuning.datasets, "load_dataset", fake_load_dataset)
    metrics = _run(checkpoint, tmp_path / "mnli", "--task_name", "mnli")
    assert requested == [("nyu-mll/glue", "mnli")]  # the Hub dataset, with the task as its configuration
    glue = _fake_glue("mnli", original)
    matched = _predictions(tmp_path / "mnli" / "MNLI-m.tsv")
    mismatched = _predictions(tmp_path / "mnli" / "MNLI-mm.tsv")
    assert [row[0] for row in matched[1:] + mismatched[1:]] == [str(i) for i in range(45)]  # GLUE's idx
    expected = {
        **_metrics_of_predictions(
            tmp_path / "mnli" / "MNLI-m.tsv", GLUE_TASKS["mnli"], glue["validation_matched"]["label"]
        ),
        **_metrics_of_predictions(
            tmp_path / "mnli" / "MNLI-mm.tsv",
            GLUE_TASKS["mnli"],
            glue["validation_mismatched"]["label"],
            prefix="eval_mismatched",
        ),
    }
    assert set(expected) == {"eval_accuracy", "eval_mismatched_accuracy"} and _reported(metrics, expected) == expected
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mnli")
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}

    finetune_glue.main(
        [
            "--task_name",
            "ax",
            "--model_name_or_path",
            str(tmp_path / "mnli"),
            "--output_dir",
            str(tmp_path / "ax"),
            "--do_predict",
            "--use_cpu",
            "--report_to",
            "none",
        ]
    )
    rows = _predictions(tmp_path / "ax" / "AX.tsv")
    assert rows[0] == ["index", "prediction"] and len(rows) == 1 + 76
    # The MNLI model's predictions: on the pairs MNLI's test splits held, what the MNLI run wrote.
    assert rows[1:46] == matched[1:] + mismatched[1:]


def test_do_train_without_training_data_is_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--do_train needs training data"):
        finetune_glue.main(
            [
                "--model_name_or_path",
                str(checkpoint),
                "--output_dir",
                str(tmp_path),
                "--do_train",
                "--validation_file",
                str(DATA / "sentiment_sample" / "validation.tsv"),
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )
