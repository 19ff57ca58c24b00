"""Code paths that run only on a CUDA GPU; every test here skips without one.

- deberta_flex: flex_attention compiled into one fused kernel with its backward (on a CPU it runs unfused and
  forward only), against the eager kernel, forward and gradients, in fp32 and bf16;
- the sdpa and chunked kernels on CUDA in bf16, against eager;
- unpadded batches on CUDA (groups of similar lengths through each kernel) against the padded eager computation;
- the benchmark's CUDA branch: max_memory_allocated, the flex column, bf16, the peers when installed.
"""

import importlib.util
import math

import pytest
import torch
from torch.testing import assert_close

from deberta_lite import DebertaLiteModel

from helpers import gradients, load_script, padded_inputs, tiny_config


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")

# flex_attention's GPU kernel wants a head size of at least 16: 4 heads of 16.
FLEX_SIZES = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128)
# Largest difference accepted, relative to the reference tensor's largest magnitude: bf16 rounds to about 3 digits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = ""):
    scale = max(expected.abs().max().item(), 1e-6)
    assert_close(
        actual.float(),
        expected.float(),
        atol=TOLERANCE[dtype] * scale,
        rtol=TOLERANCE[dtype],
        msg=lambda message: f"{name}: {message}",
    )


def compare_backends(backend: str, dtype: torch.dtype):
    """Every hidden state at the real tokens and every gradient of `backend` against eager, same weights and inputs."""
    config = tiny_config(**FLEX_SIZES)
    torch.manual_seed(0)
    model = DebertaLiteModel(config).to("cuda", dtype).train()  # no dropout in the tiny config: train is deterministic
    inputs = {name: value.cuda() for name, value in padded_inputs(config).items() if value is not None}
    keep = inputs["attention_mask"].bool()
    # A fixed random readout of the real tokens: a sum of squares after the final LayerNorm would be constant (its
    # gradients rounding noise), this one is not.
    readout = torch.randn(*keep.shape, config.hidden_size, device="cuda") * keep[..., None]
    results = {}
    for implementation in ("eager", backend):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        outputs = model(**inputs, output_hidden_states=True)
        (outputs.last_hidden_state.float() * readout).sum().backward()
        results[implementation] = outputs.hidden_states, gradients(model)
    (eager_states, eager_gradients), (states, new_gradients) = results["eager"], results[backend]
    for layer, (actual, expected) in enumerate(zip(states, eager_states, strict=True)):
        assert_close_scaled(actual[keep], expected[keep], dtype, f"hidden state {layer}")
    assert new_gradients.keys() == eager_gradients.keys()
    for name, expected in eager_gradients.items():
        assert_close_scaled(new_gradients[name], expected, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_flex_on_cuda_equals_eager_forward_and_gradients(dtype):
    compare_backends("deberta_flex", dtype)


@pytest.mark.parametrize("backend", ["sdpa", "deberta_chunked"])
def test_sdpa_and_chunked_on_cuda_in_bf16_equal_eager(backend):
    compare_backends(backend, torch.bfloat16)


@pytest.mark.parametrize("backend", ["sdpa", "deberta_chunked"])
def test_unpadded_batches_on_cuda_equal_padded_eager(backend):
    config = tiny_config()
    torch.manual_seed(0)
    model = DebertaLiteModel(config).cuda().train()
    inputs = {name: value.cuda() for name, value in padded_inputs(config).items() if value is not None}
    keep = inputs["attention_mask"].bool()
    readout = torch.randn(*keep.shape, config.hidden_size, device="cuda")
    results = {}
    for implementation, unpad in (("eager", False), (backend, True)):
        model.set_attn_implementation(implementation)
        model.config.unpad_batches = unpad
        model.zero_grad()
        output = model(**inputs).last_hidden_state
        (output * readout).sum().backward()
        results[unpad] = output.detach(), gradients(model)
    assert_close_scaled(results[True][0], results[False][0], torch.float32, "last hidden state")
    for name, expected in results[False][1].items():
        assert_close_scaled(results[True][1][name], expected, torch.float32, name)


def test_benchmark_on_cuda_in_bf16(tmp_path):
    # The mini config: 4 heads of 32, which flex's and the peers' GPU kernels accept (the tiny one has heads of 8).
    rows = load_script("benchmark").main(
        [
            "--size",
            "mini",
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--shapes",
            "2x64",
            "--lean_shapes",
            "1x256",
            "--train_shapes",
            "2x64",
            "--repeats",
            "1",
            "--output",
            str(tmp_path / "bench.json"),
        ]
    )
    peers = {
        name
        for name, module in (("debertav2_disentangled_flash", "disentangled_flash"), ("flashdeberta", "flashdeberta"))
        if importlib.util.find_spec(module) is not None
    }
    lite = {"deberta_lite", "deberta_lite_chunked", "deberta_lite_flex"}
    forward = {r["model"] for r in rows if r["kind"] == "forward" and r["shape"] == "2x64"}
    assert (
        lite | {"transformers_debertav2", "bert_sdpa"}
        <= forward
        <= lite | {"transformers_debertav2", "bert_sdpa"} | peers
    )
    assert {r["model"] for r in rows if r["shape"] == "1x256"} == lite | {"bert_sdpa"}
    # The mini config has attention dropout, which deberta_flex lacks: it sits out the train step.
    assert "deberta_lite_flex" not in {r["model"] for r in rows if r["kind"] == "train step"}
    # On CUDA the peak is max_memory_allocated: a forward pass always allocates.
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert all(math.isfinite(r["max_abs_diff"]) for r in rows if r["model"] in peers)
