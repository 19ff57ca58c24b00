"""torch.compile(fullgraph=True): every head and every attention backend trace without a graph break and equal eager.

The tests compile with the `aot_eager` backend: dynamo's full-graph capture and AOT autograd, the parts a model can
break, without inductor's C++ code generation, which takes minutes per graph on a CPU. (Inductor itself was
checked by hand; see the README's Deploy section.)
"""

import pytest
import torch

from deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
)

from conftest import padded_batch, tiny_config


# deberta_flex is left out: on a CPU, compiling it traces, but afterwards transformers' output capture stays in its
# "compiling" state, so later uncompiled calls in the same process lose their hidden states (see the README).
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


@pytest.mark.parametrize("model_class, num_labels", [
    (DebertaLiteForSequenceClassification, 3), (DebertaLiteForTokenClassification, 3),
    (DebertaLiteForQuestionAnswering, 2),
])
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


def test_masked_lm_loss_without_masked_tokens_is_zero_and_backpropagates():
    torch.manual_seed(0)
    model = DebertaLiteForMaskedLM(tiny_config())
    input_ids, attention_mask = padded_batch()
    loss = model(input_ids, attention_mask=attention_mask, labels=torch.full_like(input_ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)
