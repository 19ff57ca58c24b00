"""Sharing on the Hugging Face Hub: model cards, pushing a checkpoint, and failing early when pushing cannot work.

A pushed repository holds the safetensors weights, the config (whose `auto_map` names every Auto class), the
configuration and modeling source files (remote code), the tokenizer files and a model card. `push_checkpoint`
never uploads pickles, optimizer states or intermediate checkpoints. Our trainers save the training arguments as
`training_args.json`; only Trainer's pushes of intermediate saves (`--hub_strategy every_save`) still write and
upload its pickled `training_args.bin`.
"""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .configuration_deberta_lite import HEADS, MIN_TRANSFORMERS_VERSION


# What is never uploaded: intermediate checkpoints, pickles (training_args.bin, optimizer and RNG states), caches.
IGNORE_PATTERNS = ["checkpoint-*", "_*", "*.pt", "*.pth", "*.bin", "runs/*", ".cache/*"]
HYPERPARAMETERS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
    "optim",
    "seed",
    "bf16",
    "fp16",
)


class HubPushError(RuntimeError):
    """Pushing cannot work or did not work; the local checkpoint is untouched."""


def check_push_ready(push_to_hub: bool, token: str | None = None) -> None:
    """Fail before any training when a push at the end could not succeed."""
    if not push_to_hub:
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise HubPushError("--push_to_hub was given but HF_HUB_OFFLINE is set: unset it to push")
    if not (token or get_token()):
        raise HubPushError(
            "--push_to_hub needs a Hugging Face token with write access: run `hf auth login`, set HF_TOKEN, or pass "
            "--hub_token. (Checked before training, so no work is lost.)"
        )


def write_model_card(
    output_dir: str | Path,
    repo_id: str | None = None,
    hyperparameters: dict | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
) -> Path:
    """README.md for a checkpoint directory: YAML metadata (with model-index results from eval_results.json) and a
    body with the architecture, training hyperparameters, results and a usage snippet."""
    output_dir = Path(output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    architecture = (config.get("architectures") or ["DebertaLiteModel"])[0]
    pipeline_tag = HEADS[architecture].task if architecture in HEADS else None
    results_path = output_dir / "eval_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    name = repo_id or output_dir.name
    metrics = {
        key.removeprefix("eval_"): value
        for key, value in results.items()
        if isinstance(value, (int, float)) and not key.endswith(("runtime", "per_second", "epoch"))
    }
    eval_results = (
        [
            EvalResult(
                task_type=pipeline_tag or "feature-extraction",
                dataset_type=dataset or "custom",
                dataset_name=dataset or "custom",
                metric_type=metric,
                metric_value=float(value),
            )
            for metric, value in metrics.items()
        ]
        if dataset or metrics
        else None
    )
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["deberta-lite", "deberta", "custom_code"],
        license=license,
        datasets=[dataset] if dataset and "/" in dataset else None,
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    card = ModelCard(
        f"---\n{card_data.to_yaml()}\n---\n\n"
        + _card_body(name, config, architecture, hyperparameters, metrics, dataset)
    )
    card.save(output_dir / "README.md")
    return output_dir / "README.md"


def _card_body(name, config, architecture, hyperparameters, metrics, dataset) -> str:
    emd = config.get("emd_num_layers", 2)
    lines = [
        f"# {name}",
        "",
        f"A DeBERTa-lite `{architecture}`: a DeBERTa-v2/v3 encoder with disentangled attention (content-to-content,"
        " content-to-position and position-to-content over log-bucketed relative positions) in every layer"
        + (
            f", and an enhanced mask decoder of {emd} passes for masked LM."
            if architecture.endswith("MaskedLM") and emd
            else "."
        ),
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
    ]
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "position_buckets",
        "max_relative_positions",
        "pos_att_type",
    ):
        if field in config:
            lines.append(f"| {field} | {config[field]} |")
    if hyperparameters:
        lines += ["", "## Training hyperparameters", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in hyperparameters.items()]
    if metrics:
        lines += ["", "## Results" + (f" ({dataset})" if dataset else ""), "", "| metric | value |", "|---|---|"]
        lines += [
            f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in metrics.items()
        ]
    auto_class = HEADS[architecture].auto_class if architecture in HEADS else "AutoModel"
    task = HEADS[architecture].task if architecture in HEADS else None
    # What the copied code asked for when it was saved; configs saved before it was recorded get this package's.
    min_version = config.get("min_transformers_version", MIN_TRANSFORMERS_VERSION)
    lines += [
        "",
        "## Usage",
        "",
        "The modeling code ships with the weights, so plain transformers loads it with `trust_remote_code=True` (with",
        "the `deberta_lite` package installed, `import deberta_lite` instead). That code needs",
        f"transformers>={min_version}: `pip install -U 'transformers>={min_version}'`.",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto_class}"
        + (", pipeline" if task in ("fill-mask", "text-classification") else ""),
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f'model = {auto_class}.from_pretrained("{name}", trust_remote_code=True)',
    ]
    if task == "fill-mask":
        lines.append(
            f'print(pipeline("fill-mask", model=model, tokenizer=tokenizer)("The capital of France is {"[MASK]"}."))'
        )
    elif task == "text-classification":
        lines.append('print(pipeline("text-classification", model=model, tokenizer=tokenizer)("A wonderful film."))')
    lines += ["```", ""]
    return "\n".join(lines)


def hyperparameters_of(training_args) -> dict:
    return {key: getattr(training_args, key) for key in HYPERPARAMETERS if getattr(training_args, key, None)}


def push_checkpoint(
    checkpoint_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload DeBERTa-lite checkpoint",
    revision: str | None = None,
) -> str:
    """Upload a saved checkpoint directory (model card included; written if absent). Returns the commit URL."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").exists():
        raise HubPushError(f"{checkpoint_dir} is not a checkpoint directory (no config.json)")
    if not any(checkpoint_dir.glob("*.safetensors")):
        raise HubPushError(f"{checkpoint_dir} has no safetensors weights to push")
    check_push_ready(True, token)
    if not (checkpoint_dir / "README.md").exists():
        write_model_card(checkpoint_dir, repo_id=repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(checkpoint_dir),
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS,
            revision=revision,
        )
    except Exception as error:  # HTTP errors, refused connections, timeouts: one message that says what to do
        raise HubPushError(retry_message(checkpoint_dir, repo_id, error)) from error
    return commit.commit_url


def retry_message(checkpoint_dir, repo_id: str, error: Exception) -> str:
    return (
        f"pushing to {repo_id} failed: {type(error).__name__}: {error}\n"
        f"The checkpoint is saved in {checkpoint_dir}; nothing is lost. Retry with:\n"
        f"    python scripts/push_to_hub.py {checkpoint_dir} {repo_id}"
    )
