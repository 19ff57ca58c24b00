"""ONNX export of every DeBERTa-lite head, with dynamic batch and sequence axes (and choices, for multiple choice).

Uses torch's exporter (`torch.onnx.export(dynamo=True)`, through torch.export): the relative-position bucketing and
the c2p/p2c lookup are traced for a symbolic length, so the exported graph is right at every length, not only at
the one it was traced with. Inside the graph, attention is the `eager` kernel: explicit scores plus the full bias,
softmax in fp32. (The chunked kernel loops over a concrete number of blocks, and transformers' sdpa function fails
torch's ONNX decomposition with a symbolic batch.) Needs `onnx` and `onnxscript`, and `onnxruntime` to check the
result: `pip install -e ".[onnx]"`.

The graph's inputs are input_ids, attention_mask (and token_type_ids when the model has a token-type table); its
outputs are named as the model's outputs: `logits` (text-classification, fill-mask, token-classification,
multiple-choice), `start_logits` and `end_logits` (question-answering), `last_hidden_state` (feature-extraction).
"""

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig

from .configuration_deberta_lite import HEADS, DebertaLiteConfig
from .modeling_deberta_lite import DebertaLiteForMaskedLM


# Every head with a task exports, under its task name, loaded through its Auto class (both from the table of heads).
TASK_OF_ARCHITECTURE = {name: head.task for name, head in HEADS.items() if head.task}
TASKS = {head.task: getattr(transformers, head.auto_class) for head in HEADS.values() if head.task}
# Input shapes: (batch, sequence), or (batch, choices, sequence) for multiple choice. The traced sizes differ from
# each other so that the exporter cannot take two axes for one; the checks include a length longer than the traced.
TRACE_SHAPES = {"multiple-choice": (2, 3, 16)}
CHECK_SHAPES = {"multiple-choice": ((1, 2, 7), (2, 4, 16), (3, 3, 61))}
DEFAULT_TRACE_SHAPE = (2, 16)
DEFAULT_CHECK_SHAPES = ((1, 7), (2, 16), (3, 61))


def task_of(config: DebertaLiteConfig) -> str:
    for architecture in config.architectures or []:
        if architecture in TASK_OF_ARCHITECTURE:
            return TASK_OF_ARCHITECTURE[architecture]
    raise ValueError(f"cannot tell the task from architectures={config.architectures}; pass task= one of {list(TASKS)}")


def load_for_export(model_name_or_path: str | Path, task: str | None = None):
    """The checkpoint's task (default: from its architectures) and its model with the eager kernel, in eval mode."""
    task = task or task_of(AutoConfig.from_pretrained(model_name_or_path))
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not exportable; use one of {list(TASKS)}")
    return task, TASKS[task].from_pretrained(model_name_or_path, attn_implementation="eager").eval()


def sample_inputs(config: DebertaLiteConfig, shape: tuple[int, ...] = DEFAULT_TRACE_SHAPE) -> dict[str, torch.Tensor]:
    """Inputs of `shape` (sequence last): ids above the special ones; the last row (the last choice of each example,
    for multiple choice) is half padding."""
    generator = torch.Generator().manual_seed(0)
    length = shape[-1]
    inputs = {
        "input_ids": torch.randint(5, config.vocab_size, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
    }
    inputs["attention_mask"][..., -1, length // 2 :] = 0
    if config.type_vocab_size > 0:
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(shape).contiguous()
    return inputs


def output_names(model, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors the model returns (None fields are left out of a ModelOutput, as from the graph)."""
    with torch.no_grad():
        return list(model(**inputs).keys())


def export_onnx(model_name_or_path: str | Path, output_file: str | Path, task: str | None = None) -> Path:
    """Export a checkpoint to `output_file`; inputs input_ids, attention_mask (+ token_type_ids), outputs named as
    the model's (see the module docstring)."""
    task, model = load_for_export(model_name_or_path, task)
    inputs = sample_inputs(model.config, TRACE_SHAPES.get(task, DEFAULT_TRACE_SHAPE))
    # The masked LM adds absolute positions (enhanced mask decoder): its length is capped like the PyTorch model's.
    capped = isinstance(model, DebertaLiteForMaskedLM) or model.config.position_biased_input
    sequence = (
        torch.export.Dim("sequence", max=model.config.max_position_embeddings)
        if capped
        else torch.export.Dim("sequence")
    )
    batch = torch.export.Dim("batch")
    axes = (
        {0: batch, 1: torch.export.Dim("choices"), 2: sequence}
        if task == "multiple-choice"
        else {0: batch, 1: sequence}
    )
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        model,
        kwargs=inputs,
        dynamo=True,
        input_names=list(inputs),
        output_names=output_names(model, inputs),
        dynamic_shapes={name: axes for name in inputs},
    )
    program.save(str(output_file))
    return output_file


def check_onnx(
    model_name_or_path: str | Path, onnx_file: str | Path, shapes=None, task: str | None = None
) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| of each output over the input `shapes` (default: three, one longer than the
    traced one), with a padded row in each batch."""
    import onnxruntime

    task, model = load_for_export(model_name_or_path, task)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for shape in shapes or CHECK_SHAPES.get(task, DEFAULT_CHECK_SHAPES):
        inputs = sample_inputs(model.config, shape)
        with torch.no_grad():
            expected = model(**inputs)
        if list(expected.keys()) != names:
            raise ValueError(f"{onnx_file} has outputs {names} but the {task} model returns {list(expected.keys())}")
        actual = session.run(names, {name: tensor.numpy() for name, tensor in inputs.items()})
        for name, value in zip(names, actual, strict=True):
            worst[name] = max(worst[name], float(abs(value - expected[name].numpy()).max()))
    return worst
