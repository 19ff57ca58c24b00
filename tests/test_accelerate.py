"""The pretraining script under `accelerate launch` with the shipped configs, DDP and FSDP2 of the pretraining models:
2 processes on the CPU (gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM

from helpers import ROOT, accelerate_launch, free_port, pretraining_args


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_two_process_pretraining_run(config, tokenizer_dir, tmp_path):
    # On the CPU accelerate runs fsdp.yaml as data parallel (MULTI_CPU, nothing sharded): this checks that the config
    # launches; test_fsdp2_shards_replaced_token_detection_on_the_cpu shards with torch's FSDP2 itself.
    output_dir = tmp_path / "run"
    accelerate_launch(
        config,
        str(ROOT / "scripts" / "pretrain_mlm.py"),
        pretraining_args(
            tokenizer_dir,
            output_dir,
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "16",
        ),
        tmp_path,
        timeout=600,
    )
    # 2 steps x 4 blocks x 2 processes = half of the 32 training blocks: both processes trained.
    assert json.loads((output_dir / "train_results.json").read_text())["epoch"] == pytest.approx(0.5)
    assert "eval_perplexity" in json.loads((output_dir / "eval_results.json").read_text())
    model = AutoModelForMaskedLM.from_pretrained(output_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.lm_head.decoder.weight is model.deberta.embeddings.word_embeddings.weight


DDP_MODELS = ["DebertaLiteForSequenceClassification", "DebertaLiteForMaskedLM", "DebertaV2ForSequenceClassification"]


def run_two_processes(worker: str, output_dir, *args):
    """tests/`worker` in 2 processes (torch.distributed.run, gloo), with output_dir and `args` as its arguments."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "tests" / worker),
        str(output_dir),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Per model, what each of 2 DDP processes (gloo, find_unused_parameters=False) reported after 2 steps."""
    output_dir = tmp_path_factory.mktemp("ddp")
    run_two_processes("ddp_worker.py", output_dir, *DDP_MODELS)
    ranks = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    return {name: [results[name] for results in ranks] for name in DDP_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("name", DDP_MODELS)
def test_ddp_trains_without_searching_for_unused_parameters(ddp_results, name):
    """DDP's default (find_unused_parameters=False) fails at the second step if any parameter got no gradient in
    the first; DebertaV2 is the reference that trains in the same setup."""
    first, second = ddp_results[name]
    assert first["error"] is None and second["error"] is None, first["error"] or second["error"]
    assert len(first["losses"]) == len(second["losses"]) == 2
    assert first["losses"] != second["losses"]  # each process trained on its own batch...
    assert first["trained"] == second["trained"]  # ...and the averaged gradients kept the weights identical
    assert first["trained"] != first["initial"]


@pytest.mark.slow
def test_fsdp2_shards_replaced_token_detection_on_the_cpu(tmp_path):
    """accelerate never shards on the CPU (fsdp.yaml there runs as DDP: accelerate/state.py enables FSDP only for
    GPU-like devices), so torch's own FSDP2 (fully_shard over gloo) shards the pretraining model here, as fsdp.yaml
    would on GPUs: every sharing mode trains as the unsharded model does, and the gathered weights save a
    discriminator and a generator that load with the unsharded model's folded weights."""
    modes = ["gdes", "shared", "none"]
    run_two_processes("fsdp_worker.py", tmp_path, *modes)
    results = json.loads((tmp_path / "results.json").read_text())
    for mode in modes:
        assert results[mode]["sharded"] == results[mode]["parameters"], mode  # every parameter a DTensor
        for name in ("gathered", "discriminator", "generator"):
            assert results[mode][name] < 1e-6, (mode, name, results[mode][name])
