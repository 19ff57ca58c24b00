"""MLM pretraining: data loading, metrics, learning, resuming, the script's errors; callbacks of both runs."""

import json

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, EvalPrediction

from deberta_lite.pretraining import (
    build_masked_lm,
    build_rtd_model,
    load_raw_datasets,
    masked_accuracy,
    parse_overrides,
    predictions_from_logits,
    run_pretraining,
    run_rtd_pretraining,
    tokenize_and_group,
)

from helpers import (
    ROOT,
    StopAtStep,
    assert_close_by_name,
    document_packing_run_args,
    load_script,
    pretraining_args,
    pretraining_inputs,
    record_position_ids,
    resumable_run_args,
)


pretrain_mlm = load_script("pretrain_mlm")


def test_predictions_and_accuracy_by_hand():
    labels = torch.tensor([[-100, 5, -100, 7], [3, -100, -100, -100]])
    sparse = torch.zeros(3, 10)
    sparse[0, 5] = sparse[1, 1] = sparse[2, 3] = 1.0  # right, wrong, right
    predictions = predictions_from_logits(sparse, labels)
    assert predictions.tolist() == [[-100, 5, -100, 1], [3, -100, -100, -100]]
    dense = torch.zeros(2, 4, 10)
    dense[0, 1, 5] = dense[0, 3, 7] = dense[1, 0, 2] = 1.0  # right, right, wrong
    assert predictions_from_logits(dense, labels).tolist() == [[-100, 5, -100, 7], [2, -100, -100, -100]]
    accuracy = masked_accuracy(EvalPrediction(predictions=predictions.numpy(), label_ids=labels.numpy()))
    assert accuracy == {"accuracy": pytest.approx(2 / 3)}


def test_parse_overrides():
    assert parse_overrides("hidden_size=64, pos_att_type=c2p,norm_rel_ebd=none, hidden_dropout_prob=0.0") == {
        "hidden_size": 64,
        "pos_att_type": "c2p",
        "norm_rel_ebd": "none",
        "hidden_dropout_prob": 0.0,
    }
    with pytest.raises(ValueError, match="name=value"):
        parse_overrides("hidden_size")


@pytest.mark.parametrize("suffix", [".txt", ".json", ".jsonl", ".csv", ".parquet"])
def test_local_files_of_every_type(tmp_path, suffix):
    rows = [f"sentence number {i} about rivers and cities" for i in range(40)] + ["", "   "]
    table = datasets.Dataset.from_dict({"text": rows})
    path = tmp_path / f"train{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(rows) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps([{"text": row} for row in rows]))  # a JSON array of records
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": row}) for row in rows))
    elif suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path)
    raw = load_raw_datasets(train_file=str(path), validation_split_percentage=10)
    assert len(raw["validation"]) == 4 and len(raw["train"]) == 36  # 4 held out of 42, then blank rows dropped
    assert raw["validation"][0]["text"] == rows[0]


def test_data_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_raw_datasets(train_file=str(tmp_path / "missing.txt"))
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_raw_datasets(train_file=str(tmp_path / "data.xml"))
    (tmp_path / "data.csv").write_text("body\nsome text\n")
    with pytest.raises(ValueError, match="no text column 'text'.*body"):
        load_raw_datasets(train_file=str(tmp_path / "data.csv"))


def test_too_little_text_for_one_block_is_an_error(tokenizer_dir, tmp_path):
    (tmp_path / "short.txt").write_text("a few words\nand a few more\n")
    with pytest.raises(ValueError, match="fewer than 128 tokens"):
        pretrain_mlm.main(
            pretraining_args(
                tokenizer_dir,
                tmp_path / "out",
                "--train_file",
                str(tmp_path / "short.txt"),
                "--validation_file",
                str(tmp_path / "short.txt"),
                "--do_train",
            )
        )


def test_sequence_longer_than_the_emd_allows_is_refused_before_training(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        pretrain_mlm.main(pretraining_args(tokenizer_dir, tmp_path / "out", "--max_seq_length", "256", "--do_train"))


def test_short_pretraining_lowers_validation_loss(tokenizer_dir, tmp_path):
    metrics = pretrain_mlm.main(
        pretraining_args(
            tokenizer_dir,
            tmp_path / "run",
            "--do_train",
            "--do_eval",
            "--eval_before_training",
            "--max_steps",
            "40",
            "--learning_rate",
            "2e-3",
            "--warmup_steps",
            "4",
            "--masking",
            "whole_word",
            "--save_strategy",
            "no",
        )
    )
    assert metrics["eval_loss"] < metrics["before_loss"] - 0.3
    assert metrics["eval_accuracy"] > metrics["before_accuracy"]
    assert metrics["eval_perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]))
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "eval_results.json").exists()
    # The saved tokenizer truncates to what the masked LM takes (its enhanced mask decoder is capped at 128).
    assert AutoTokenizer.from_pretrained(tmp_path / "run").model_max_length == 128


def test_resuming_continues_at_the_saved_step_with_identical_state(tokenizer_dir, tmp_path):
    pretrain_mlm.main(resumable_run_args(tokenizer_dir, tmp_path / "straight", "--logging_steps", "1"))
    pretrain_mlm.main(
        resumable_run_args(
            tokenizer_dir,
            tmp_path / "resumed",
            "--logging_steps",
            "1",
            "--resume_from_checkpoint",
            str(tmp_path / "straight" / "checkpoint-4"),
        )
    )
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    # It continued at step 5: no step-4 checkpoint of its own, and steps 1-4 of its history are the checkpoint's.
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    straight_state = json.loads((tmp_path / "straight" / "trainer_state.json").read_text())
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == pytest.approx(
        [e["loss"] for e in straight_state["log_history"] if "loss" in e], abs=1e-6
    )
    straight, resumed = tmp_path / "straight" / "checkpoint-6", tmp_path / "resumed" / "checkpoint-6"
    before, after = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert_close_by_name(after, before, atol=1e-6, rtol=0)
    optimizer_before = torch.load(straight / "optimizer.pt", weights_only=True)["state"]
    optimizer_after = torch.load(resumed / "optimizer.pt", weights_only=True)["state"]
    assert optimizer_before.keys() == optimizer_after.keys()
    for index in optimizer_before:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer_after[index][name], optimizer_before[index][name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "build, run, saved",
    [
        (build_masked_lm, run_pretraining, "model.safetensors"),
        (build_rtd_model, run_rtd_pretraining, "discriminator/model.safetensors"),
    ],
)
def test_a_callback_given_to_the_run_stops_training(tokenizer_dir, tmp_path, build, run, saved):
    output_dir = tmp_path / "run"
    tokenizer, training_args, train_dataset, eval_dataset, masker = pretraining_inputs(
        tokenizer_dir, output_dir, "--do_train", "--do_eval", "--max_steps", "6", "--max_train_samples", "64"
    )
    model = build(tokenizer, config_name=str(ROOT / "configs" / "tiny.json"))
    stop = StopAtStep(2)
    metrics = run(model, tokenizer, training_args, train_dataset, eval_dataset, masker, callbacks=[stop])
    assert stop.steps == [1, 2]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert metrics["epoch"] == pytest.approx(2 * 8 / 64)
    # Stopped early, the run still saves and evaluates the model.
    assert (output_dir / saved).exists() and "eval_loss" in metrics


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])  # on a CPU, both run under torch's CPU autocast
def test_mixed_precision_flags_train_with_finite_loss(tokenizer_dir, tmp_path, precision):
    metrics = pretrain_mlm.main(
        pretraining_args(
            tokenizer_dir,
            tmp_path / "run",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "3",
            precision,
            "--save_strategy",
            "no",
            "--max_train_samples",
            "24",
        )
    )
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])


def test_bad_text_files_get_clear_errors_or_counted_skips(tokenizer_dir, tmp_path, caplog):
    from transformers import AutoTokenizer

    from deberta_lite.pretraining import tokenize_and_group

    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"a good line\nanother good line\n\xff\xfe not UTF-8\n")
    with pytest.raises(ValueError, match=r"broken\.txt, line 3: not valid UTF-8"):
        load_raw_datasets(train_file=str(broken))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        load_raw_datasets(train_file=str(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(ValueError, match=r"blank\.txt is empty"):
        load_raw_datasets(train_file=str(tmp_path / "blank.txt"))

    # Blank lines are skipped and counted; one enormous line is cut into blocks like any other text.
    words = " ".join(f"river{i % 97} city{i % 89}" for i in range(20000))
    (tmp_path / "train.txt").write_text("\n\nfirst line of text\n\n" + words + "\n\n")
    (tmp_path / "valid.txt").write_text("a short validation line\n\n" + words[:5000] + "\n")
    with caplog.at_level("INFO", logger="deberta_lite.pretraining"):
        raw = load_raw_datasets(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "valid.txt"))
    assert "train: skipped 4 blank rows of 6" in caplog.text
    assert "validation: skipped 1 blank rows of 3" in caplog.text
    assert len(raw["train"]) == 2 and len(raw["validation"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = tokenize_and_group(raw, tokenizer, max_seq_length=128, load_from_cache_file=False)
    assert len(blocks["train"]) > 100
    assert all(len(ids) == 128 for ids in blocks["train"]["input_ids"][:50])


# Four documents of one-piece words, 3, 1, 10 and 2 pieces long: "the" is piece 7, "of" 9, "and" 13, "in" 14 in the
# tokenizer trained on the bundled corpus; [CLS] is 1, [SEP] 2.
DOCUMENTS = ["the the the", "of", " ".join(["and"] * 10), "in in"]
THE, OF, AND, IN, CLS, SEP = 7, 9, 13, 14, 1, 2


def _grouped(tokenizer_dir, packing):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in DOCUMENTS] == [3, 1, 10, 2]
    split = datasets.Dataset.from_dict({"text": DOCUMENTS})
    raw = datasets.DatasetDict(train=split, validation=split)
    return tokenize_and_group(raw, tokenizer, max_seq_length=8, load_from_cache_file=False, packing=packing)["train"]


def test_document_packing_restarts_positions_at_each_document(tokenizer_dir):
    blocks = _grouped(tokenizer_dir, "documents")
    # Documents of 5, 3, 12 and 4 tokens with their [CLS] and [SEP]: 24 tokens, three full rows of 8. The third
    # document fills row 2 and continues in row 3 from position 0.
    assert blocks["input_ids"] == [
        [CLS, THE, THE, THE, SEP, CLS, OF, SEP],
        [CLS, AND, AND, AND, AND, AND, AND, AND],
        [AND, AND, AND, SEP, CLS, IN, IN, SEP],
    ]
    assert blocks["position_ids"] == [
        [0, 1, 2, 3, 4, 0, 1, 2],
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 0, 1, 2, 3],
    ]


def test_concatenate_packing_is_unchanged(tokenizer_dir):
    blocks = _grouped(tokenizer_dir, "concatenate")
    # 16 pieces, documents run into one another: two rows of [CLS] + 6 pieces + [SEP], the last 4 pieces dropped.
    assert blocks.column_names == ["input_ids"]
    assert blocks["input_ids"] == [
        [CLS, THE, THE, THE, OF, AND, AND, SEP],
        [CLS, AND, AND, AND, AND, AND, AND, SEP],
    ]


def test_unknown_packing_is_refused(tokenizer_dir):
    with pytest.raises(ValueError, match="packing='lines' is invalid"):
        _grouped(tokenizer_dir, "lines")


def _assert_positions_restart_at_documents(input_ids, position_ids):
    """In document packing, position 0 is exactly a row's first token or a [CLS] (every document starts with one,
    masking never touches it), and every other position is the previous one plus 1."""
    assert position_ids is not None
    input_ids, position_ids = torch.as_tensor(input_ids), torch.as_tensor(position_ids)
    assert position_ids.dtype == torch.long and position_ids.shape == input_ids.shape
    starts = input_ids == CLS
    starts[:, 0] = True
    assert torch.equal(position_ids == 0, starts)
    assert torch.equal(position_ids[:, 1:][~starts[:, 1:]], position_ids[:, :-1][~starts[:, 1:]] + 1)


def test_document_packing_of_the_bundled_corpus_and_its_evaluation_masks(tokenizer_dir, tmp_path):
    _, _, train_dataset, eval_dataset, _ = pretraining_inputs(tokenizer_dir, tmp_path, "--packing", "documents")
    train = train_dataset.with_format("torch")[:200]
    assert (train["input_ids"] != 0).all()  # full rows: no padding
    _assert_positions_restart_at_documents(train["input_ids"], train["position_ids"])
    assert (train["position_ids"][:, 1:] == 0).sum() > 100  # documents start inside rows, not only at row starts
    evaluation = eval_dataset.with_format("torch")[:]
    assert (evaluation["labels"] != -100).any()  # masked once, positions kept
    _assert_positions_restart_at_documents(evaluation["input_ids"], evaluation["position_ids"])


def test_document_packing_reaches_the_masked_lm_in_training_and_evaluation(tokenizer_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pretrain_mlm, "build_masked_lm", record_position_ids(pretrain_mlm.build_masked_lm, calls))
    pretrain_mlm.main(document_packing_run_args(tokenizer_dir, tmp_path / "run"))
    assert [training for _, training, _, _ in calls] == [True, True, False]
    for _, _, input_ids, position_ids in calls:
        _assert_positions_restart_at_documents(input_ids, position_ids)
