"""torch.compile(fullgraph=True): every head and every attention backend trace without a graph break and equal eager.
Without fullgraph, as Trainer's --torch_compile compiles, every head is one graph and a second step does not recompile.

The full-graph tests compile with the `aot_eager` backend: dynamo's full-graph capture and AOT autograd, the parts a
model can break, without inductor's C++ code generation, which takes minutes per graph on a CPU. (Inductor itself was
checked by hand; see docs/deployment.md.) The others count graphs with dynamo's explain and a counting
backend, which compile nothing.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
)

from helpers import HEAD_CLASSES, head_config, head_inputs, padded_batch, tiny_config


# deberta_flex is left out: on a CPU, compiling it traces, but afterwards transformers' output capture stays in its
# "compiling" state, so later uncompiled calls in the same process lose their hidden states (docs/deployment.md,
# Limitations).
BACKENDS = ["eager", "sdpa", "deberta_chunked"]


def _compare(model, inputs: dict):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected, actual = model(**inputs), compiled(**inputs)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-5, msg=key)
    return expected


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("model_class", [DebertaLiteModel, DebertaLiteForMaskedLM])
def test_encoder_and_masked_lm_compile_on_every_backend(model_class, implementation):
    torch.manual_seed(0)
    model = model_class(tiny_config(conv_kernel_size=3)).eval()
    model.set_attn_implementation(implementation)
    input_ids, attention_mask = padded_batch()
    kwargs = {"attention_chunk_size": 5} if implementation == "deberta_chunked" else {}
    _compare(model, {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})


@pytest.mark.parametrize(
    "model_class, num_labels",
    [
        (DebertaLiteForSequenceClassification, 3),
        (DebertaLiteForTokenClassification, 3),
        (DebertaLiteForQuestionAnswering, 2),
    ],
)
def test_task_heads_compile(model_class, num_labels):
    torch.manual_seed(0)
    model = model_class(tiny_config(num_labels=num_labels)).eval()
    input_ids, attention_mask = padded_batch()
    _compare(model, {"input_ids": input_ids, "attention_mask": attention_mask})


def test_multiple_choice_compiles():
    torch.manual_seed(0)
    model = DebertaLiteForMultipleChoice(tiny_config()).eval()
    input_ids, attention_mask = padded_batch(batch=6)
    _compare(model, {"input_ids": input_ids.view(2, 3, -1), "attention_mask": attention_mask.view(2, 3, -1)})


@pytest.mark.parametrize("implementation", ["sdpa", "deberta_chunked"])
def test_masked_lm_training_step_compiles(implementation):
    """Labels decode only the masked positions, a data-dependent shape; the loss and every gradient match eager."""
    input_ids, attention_mask = padded_batch()
    labels = input_ids.masked_fill((attention_mask == 0) | (torch.arange(12) % 3 != 0), -100)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = DebertaLiteForMaskedLM(tiny_config())
        model.set_attn_implementation(implementation)
        torch._dynamo.reset()
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        loss = run(input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 10
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- Trainer's --torch_compile: no fullgraph


# Every head with its training targets (the bare encoder has none), and the masked LM without labels too.
HEAD_CALLS = [(cls, cls is not DebertaLiteModel) for cls in HEAD_CLASSES] + [(DebertaLiteForMaskedLM, False)]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "model_class, labels",
    HEAD_CALLS,
    ids=[f"{cls.__name__}{'-labels' if labels else ''}" for cls, labels in HEAD_CALLS],
)
def test_no_graph_break_without_fullgraph(model_class, labels, implementation):
    """torch.compile as Trainer's --torch_compile runs it (fullgraph=False) splits the graph wherever the forward reads
    a tensor back to the host: every break costs a separate graph and the Python in between on every step."""
    torch.manual_seed(0)
    config = head_config(model_class)
    model = model_class(config)
    model.set_attn_implementation(implementation)
    inputs = head_inputs(model_class, config, labels)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(**inputs)
        assert explanation.graph_break_count == 0, (
            mode,
            [str(reason.reason)[:300] for reason in explanation.break_reasons],
        )
        assert explanation.graph_count == 1, mode


@pytest.mark.parametrize("model_class", [cls for cls, labels in HEAD_CALLS if labels], ids=lambda cls: cls.__name__)
def test_a_second_training_step_does_not_recompile(model_class):
    """The first loss call must not change anything a compiled graph is guarded on (the config's problem_type was)."""
    torch.manual_seed(0)
    config = head_config(model_class)
    model = model_class(config).train()
    first = head_inputs(model_class, config)
    second = {name: value.flip(0) for name, value in first.items()}  # a new batch of the same shape
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    compiled(**first).loss.backward()
    frames = counter.frame_count
    compiled(**second).loss.backward()
    assert counter.frame_count == frames, "the second step recompiled"
    assert frames == 1, "the forward was split into several graphs"
