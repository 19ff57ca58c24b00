"""ONNX export of DeBERTa-lite's sequence classification and masked LM heads, with dynamic batch and sequence axes.

Uses torch's exporter (`torch.onnx.export(dynamo=True)`, through torch.export): the relative-position bucketing and
the c2p/p2c lookup are traced for a symbolic length, so the exported graph is right at every length, not only at
the one it was traced with. Inside the graph, attention is the `eager` kernel: explicit scores plus the full bias,
softmax in fp32. (The chunked kernel loops over a concrete number of blocks, and transformers' sdpa function fails
torch's ONNX decomposition with a symbolic batch.) Needs `onnx` and `onnxscript`, and `onnxruntime` to check the
result: `pip install -e ".[onnx]"`.
"""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration_deberta_lite import DebertaLiteConfig
from .hub import PIPELINE_TAGS
from .modeling_deberta_lite import DebertaLiteForMaskedLM


# Task names are the pipeline tags the model card uses for these architectures (hub.PIPELINE_TAGS).
TASKS = {
    "text-classification": AutoModelForSequenceClassification,
    "fill-mask": AutoModelForMaskedLM,
}


def task_of(config: DebertaLiteConfig) -> str:
    for architecture in config.architectures or []:
        if PIPELINE_TAGS.get(architecture) in TASKS:
            return PIPELINE_TAGS[architecture]
    raise ValueError(f"cannot tell the task from architectures={config.architectures}; pass task= one of {list(TASKS)}")


def load_for_export(model_name_or_path: str | Path, task: str | None = None):
    """The checkpoint's model for `task` (default: from its architectures), with the eager kernel, in eval mode."""
    task = task or task_of(AutoConfig.from_pretrained(model_name_or_path))
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not exportable; use one of {list(TASKS)}")
    return TASKS[task].from_pretrained(model_name_or_path, attn_implementation="eager").eval()


def sample_inputs(config: DebertaLiteConfig, batch: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    """Inputs to trace with: a full row and a padded one (ids above the special ones)."""
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(5, config.vocab_size, (batch, length), generator=generator),
              "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    inputs["attention_mask"][-1, length // 2:] = 0
    if config.type_vocab_size > 0:
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, length).contiguous()
    return inputs


def export_onnx(model_name_or_path: str | Path, output_file: str | Path, task: str | None = None) -> Path:
    """Export a checkpoint to `output_file`; inputs input_ids, attention_mask (+ token_type_ids), output logits."""
    model = load_for_export(model_name_or_path, task)
    inputs = sample_inputs(model.config)
    batch = torch.export.Dim("batch")
    # The masked LM adds absolute positions (enhanced mask decoder): its length is capped like the PyTorch model's.
    capped = isinstance(model, DebertaLiteForMaskedLM) or model.config.position_biased_input
    sequence = torch.export.Dim("sequence", max=model.config.max_position_embeddings) if capped \
        else torch.export.Dim("sequence")
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        model,
        kwargs=inputs,
        dynamo=True,
        input_names=list(inputs),
        output_names=["logits"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
    )
    program.save(str(output_file))
    return output_file


def check_onnx(model_name_or_path: str | Path, onnx_file: str | Path, shapes=((1, 7), (2, 16), (3, 61)),
               task: str | None = None) -> float:
    """Largest |onnxruntime - PyTorch| over the logits at each (batch, length), with a padded row in each batch."""
    import onnxruntime

    model = load_for_export(model_name_or_path, task)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, length in shapes:
        inputs = sample_inputs(model.config, batch, length)
        with torch.no_grad():
            expected = model(**inputs).logits.numpy()
        actual = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        worst = max(worst, float(abs(actual - expected).max()))
    return worst
