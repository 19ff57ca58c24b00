"""Push to the Hub and load back, over real HTTP against a loopback server (tests/hub_server.py).

Pushing and loading run in subprocesses: huggingface_hub reads HF_ENDPOINT when it is imported, and the loading
process must not be able to import deberta_lite at all.
"""

import json
import socket
import subprocess
import sys

import pytest
import yaml

from deberta_lite import DebertaLiteForSequenceClassification
from deberta_lite.configuration_deberta_lite import AUTO_MAP

from helpers import DATA, ROOT, hub_env, load_script, run_python, tiny_config


pytestmark = pytest.mark.slow


# Pushes from a process that has deberta_lite, and writes what the loading process must find: the models' outputs,
# fill-mask's top tokens and the classifier's label and probability, computed here without a pipeline.
PUSH = """
    import json, sys
    from pathlib import Path
    import torch
    from transformers import AutoTokenizer
    from deberta_lite import DebertaLiteConfig, DebertaLiteForMaskedLM, DebertaLiteForSequenceClassification

    root, tokenizer_dir, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    sys.path.insert(0, str(root / "tests"))
    from helpers import TINY, classifier_prediction, load_script, top_mask_predictions

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes = {**TINY, "vocab_size": len(tokenizer)}
    torch.manual_seed(0)

    # 1. model.push_to_hub and tokenizer.push_to_hub
    mlm = DebertaLiteForMaskedLM(DebertaLiteConfig(**sizes)).eval()
    mlm.push_to_hub("user/mlm")
    tokenizer.push_to_hub("user/mlm")

    # 2. scripts/push_to_hub.py on a saved checkpoint with evaluation results
    labels = {0: "negative", 1: "positive"}
    clf = DebertaLiteForSequenceClassification(DebertaLiteConfig(
        **sizes, id2label=labels, label2id={v: k for k, v in labels.items()})).eval()
    clf.save_pretrained(work / "clf")
    tokenizer.save_pretrained(work / "clf")
    (work / "clf" / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_loss": 0.5}))
    (work / "clf" / "training_args.bin").write_bytes(b"a pickle that must not be uploaded")
    load_script("push_to_hub").main([str(work / "clf"), "user/clf"])

    # 3. Trainer(push_to_hub=True, hub_strategy="every_save"), through the fine-tuning script
    mlm.save_pretrained(work / "mlm")
    tokenizer.save_pretrained(work / "mlm")
    data = root / "data" / "sentiment_sample"
    load_script("finetune_glue").main([
        "--model_name_or_path", str(work / "mlm"), "--output_dir", str(work / "trainer"), "--use_cpu",
        "--report_to", "none", "--do_train", "--do_eval", "--max_steps", "2", "--eval_steps", "1", "--save_steps",
        "1", "--train_file", str(data / "train.tsv"), "--validation_file", str(data / "validation.tsv"),
        "--max_train_samples", "16", "--max_eval_samples", "16", "--push_to_hub", "--hub_model_id", "user/trainer",
        "--hub_strategy", "every_save", "--disable_tqdm", "true"])

    inputs = dict(tokenizer(["the river flows north", "a city of stone"], padding=True, return_tensors="pt"))
    masked = f"The river {tokenizer.mask_token} north."
    with torch.no_grad():
        expected = {"inputs": inputs, "mlm": mlm(**inputs).logits, "clf": clf(**inputs).logits, "masked": masked,
                    "fill": top_mask_predictions(work / "mlm", masked, top_k=3),
                    "classify": classifier_prediction(work / "clf", "a fine film")}
    torch.save(expected, work / "expected.pt")
    print("pushed")
"""

LOAD = """
    import sys
    from pathlib import Path
    import torch
    from transformers import (AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer,
                              pipeline)

    work = Path(sys.argv[1])
    expected = torch.load(work / "expected.pt")
    config = AutoConfig.from_pretrained("user/mlm", trust_remote_code=True)
    assert type(config).__name__ == "DebertaLiteConfig"
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    tokenizer = AutoTokenizer.from_pretrained("user/mlm")
    mlm = AutoModelForMaskedLM.from_pretrained("user/mlm", trust_remote_code=True).eval()
    clf = AutoModelForSequenceClassification.from_pretrained("user/clf", trust_remote_code=True).eval()
    trained = AutoModelForSequenceClassification.from_pretrained("user/trainer", trust_remote_code=True).eval()
    assert type(mlm).__name__ == "DebertaLiteForMaskedLM" and type(trained).__name__.endswith("SequenceClassification")
    with torch.no_grad():
        assert torch.equal(mlm(**expected["inputs"]).logits, expected["mlm"])
        assert torch.equal(clf(**expected["inputs"]).logits, expected["clf"])
    fill = pipeline("fill-mask", model=mlm, tokenizer=tokenizer, top_k=3)(expected["masked"])
    tokens, scores = expected["fill"]
    assert [prediction["token"] for prediction in fill] == tokens, (fill, tokens)
    torch.testing.assert_close([prediction["score"] for prediction in fill], scores, rtol=1e-5, atol=1e-6)
    classify = pipeline("text-classification", model=clf, tokenizer=AutoTokenizer.from_pretrained("user/clf"))
    (result,) = classify("a fine film")
    assert result["label"] == expected["classify"]["label"], (result, expected["classify"])
    torch.testing.assert_close(result["score"], expected["classify"]["score"], rtol=1e-5, atol=1e-6)
    print("loaded")
"""


def test_push_then_load_with_plain_transformers(hub, tokenizer_dir, tmp_path):
    state, url = hub
    (tmp_path / "push").mkdir()
    pushed = run_python(
        PUSH, hub_env(url, tmp_path / "home"), tmp_path / "push", ROOT, tokenizer_dir, tmp_path / "push"
    )
    assert pushed.returncode == 0, pushed.stderr[-4000:]

    files = state.files("user/clf")
    for name in (
        "model.safetensors",
        "config.json",
        "configuration_deberta_lite.py",
        "modeling_deberta_lite.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ):
        assert name in files, name
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert json.loads(files["config.json"])["auto_map"] == AUTO_MAP
    card = files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-classification"
    assert "deberta-lite" in metadata["tags"] and metadata["license"] == "apache-2.0"
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == 0.75
    assert "## Architecture" in card and "trust_remote_code=True" in card
    for repo in ("user/mlm", "user/trainer"):
        repo_files = state.files(repo)
        assert {"model.safetensors", "config.json", "modeling_deberta_lite.py", "tokenizer.json"} <= set(repo_files)
    trainer_card = state.files("user/trainer")["README.md"].decode()
    assert "## Training hyperparameters" in trainer_card and "learning_rate" in trainer_card

    (tmp_path / "load").mkdir()
    loaded = run_python(
        LOAD, hub_env(url, tmp_path / "fresh_home"), tmp_path / "load", tmp_path / "push", without_deberta_lite=True
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    assert "loaded" in loaded.stdout


def test_missing_token_is_reported_before_training(tmp_path, monkeypatch):
    import deberta_lite.hub

    monkeypatch.setattr(deberta_lite.hub, "get_token", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    output_dir = tmp_path / "run"
    with pytest.raises(deberta_lite.hub.HubPushError, match="needs a Hugging Face token"):
        load_script("finetune_glue").main(
            [
                "--output_dir",
                str(output_dir),
                "--do_train",
                "--push_to_hub",
                "--hub_model_id",
                "user/x",
                "--train_file",
                str(DATA / "sentiment_sample" / "train.tsv"),
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )
    assert not output_dir.exists()  # nothing started
    DebertaLiteForSequenceClassification(tiny_config()).save_pretrained(tmp_path / "checkpoint")
    with pytest.raises(SystemExit, match="needs a Hugging Face token"):
        load_script("push_to_hub").main([str(tmp_path / "checkpoint"), "user/x"])


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("failure", ["server error", "unreachable"])
def test_failed_push_keeps_the_checkpoint_and_says_how_to_retry(failure, hub, tmp_path):
    state, url = hub
    checkpoint = tmp_path / "checkpoint"
    DebertaLiteForSequenceClassification(tiny_config()).save_pretrained(checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    state.fail_commits = failure == "server error"
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), str(checkpoint), "user/failing"],
            env=hub_env(url if failure == "server error" else _closed_port_url(), tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        state.fail_commits = False
    assert result.returncode != 0
    assert "pushing to user/failing failed" in result.stderr
    assert f"python scripts/push_to_hub.py {checkpoint} user/failing" in result.stderr
    assert ("500" in result.stderr) if failure == "server error" else ("onnect" in result.stderr)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(before + ["README.md"])  # + the card for the push


def test_training_run_whose_push_fails_keeps_the_trained_model(hub, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from deberta_lite import DebertaLiteForMaskedLM

    state, url = hub
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    DebertaLiteForMaskedLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=128)).save_pretrained(
        tmp_path / "mlm"
    )
    tokenizer.save_pretrained(tmp_path / "mlm")
    data = DATA / "sentiment_sample"
    output_dir = tmp_path / "run"
    state.fail_commits = True  # the repository can be created; every commit answers 500
    try:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "finetune_glue.py"),
                "--model_name_or_path",
                str(tmp_path / "mlm"),
                "--output_dir",
                str(output_dir),
                "--use_cpu",
                "--report_to",
                "none",
                "--do_train",
                "--max_steps",
                "2",
                "--save_steps",
                "1",
                "--eval_steps",
                "1",
                "--train_file",
                str(data / "train.tsv"),
                "--validation_file",
                str(data / "validation.tsv"),
                "--max_train_samples",
                "16",
                "--max_eval_samples",
                "16",
                "--push_to_hub",
                "--hub_model_id",
                "user/failing-run",
                "--disable_tqdm",
                "true",
            ],
            env=hub_env(url, tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        state.fail_commits = False
    assert result.returncode != 0
    assert "pushing to user/failing-run failed" in result.stderr, result.stderr[-3000:]
    assert f"python scripts/push_to_hub.py {output_dir} user/failing-run" in result.stderr
    assert (output_dir / "model.safetensors").exists() and (output_dir / "config.json").exists()
