"""Plain helpers the test modules share, imported as `from helpers import ...` (fixtures live in conftest.py)."""

import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    DebertaV2ForMaskedLM,
    TrainerCallback,
    TrainingArguments,
)

import deberta_lite
from deberta_lite import (
    DebertaLiteConfig,
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForReplacedTokenDetection,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
)
from deberta_lite.attention import build_relative_lookup, relative_index
from deberta_lite.pretraining import DataArguments, ModelArguments, parse_arguments, pretraining_data


ROOT = Path(__file__).resolve().parents[1]
# Small slices of real data sets, bundled with their source and license (data/*/README.md).
DATA = ROOT / "data"

# Every model class of the package, from its one table of heads (deberta_lite.HEADS).
HEAD_CLASSES = list(deberta_lite.AUTO_CLASSES.values())

TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    position_buckets=8,
    max_relative_positions=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def load_script(name: str):
    """Import scripts/<name>.py as a module, so tests call its main(argv) directly."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> DebertaLiteConfig:
    return DebertaLiteConfig(**{**TINY, **overrides})


def full_relative_index(query_size: int, key_size: int, config: DebertaLiteConfig) -> torch.LongTensor:
    """The whole (query_size, key_size) relative index delta, expanded from the model's lookup by distance."""
    lookup = build_relative_lookup(query_size, key_size, config, torch.device("cpu"))
    return relative_index(lookup, key_size, torch.arange(query_size), slice(0, key_size))


def padded_batch(vocab_size: int = 100, batch: int = 3, length: int = 12, seed: int = 0):
    """input_ids and an attention mask with a short row, a full row and, for batch > 2, a half row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, length // 3 :] = 0
    if batch > 2:
        attention_mask[2, length // 2 :] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


# The shared tiny model, in DebertaV2's terms (the relative-position fields vary per case below).
V2_TINY = {
    **{key: value for key, value in TINY.items() if key not in ("position_buckets", "max_relative_positions")},
    "relative_attention": True,
}

CASES = {
    # (a) DeBERTa-v3: buckets, shared keys, layer-normed relative table, no absolute input positions
    "v3": dict(
        position_buckets=8,
        max_relative_positions=32,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        type_vocab_size=0,
    ),
    # (b) DeBERTa v1: no buckets, separate position projections, c2p|p2c, no relative LayerNorm
    "v1": dict(
        max_relative_positions=-1,
        share_att_key=False,
        pos_att_type="c2p|p2c",
        position_biased_input=True,
        type_vocab_size=0,
    ),
    # (c) DeBERTa-v2-xlarge: the convolution after the first layer
    "v2_xlarge": dict(
        position_buckets=8,
        max_relative_positions=32,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        conv_kernel_size=3,
        conv_act="gelu",
    ),
    # (d) embedding_size != hidden_size, with two token types
    "embed_proj": dict(
        position_buckets=8,
        max_relative_positions=32,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        embedding_size=16,
        type_vocab_size=2,
    ),
}


def v2_config(case: str, **overrides) -> DebertaV2Config:
    """The tiny model as transformers' DebertaV2 configures it, in one of the CASES layouts."""
    return DebertaV2Config(**{**V2_TINY, **CASES[case], **overrides})


def padded_inputs(config) -> dict:
    """padded_batch() as keyword arguments, with two token types (the second from position 5) where the config has a
    token type table, and token_type_ids=None where it has none."""
    input_ids, attention_mask = padded_batch()
    token_type_ids = (torch.arange(12) >= 5).long().expand(3, 12).contiguous() if config.type_vocab_size else None
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


# ---------------------------------------------------------------- checkpoints as others publish them


POSITION_TABLE = "deberta.embeddings.position_embeddings.weight"


def save_pickled(model, directory):
    """The model's config and its weights as a pickle (pytorch_model.bin) only, as older checkpoints ship them."""
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")


def original_deberta_checkpoint(directory):
    """A checkpoint laid out like Microsoft's DeBERTa-v3 releases: a config without `architectures`, the MLM head
    under its original names, the absolute position table the EMD reads, and the replaced-token-detection head.
    Returns the DebertaV2 masked LM that was saved (which has no table) and the table."""
    reference = DebertaV2ForMaskedLM(v2_config("v3", legacy=False)).eval()
    reference.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    del config["architectures"]
    (directory / "config.json").write_text(json.dumps(config))
    weights = load_file(directory / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(64, 32, generator=generator)
    weights[POSITION_TABLE] = table
    for name, shape in [
        ("dense.weight", (32, 32)),
        ("dense.bias", (32,)),
        ("LayerNorm.weight", (32,)),
        ("LayerNorm.bias", (32,)),
        ("classifier.weight", (1, 32)),
        ("classifier.bias", (1,)),
    ]:
        weights[f"mask_predictions.{name}"] = torch.randn(shape, generator=generator)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return reference, table


# ---------------------------------------------------------------- outputs and gradients compared


def gradients(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter's gradient, by name; parameters the loss did not reach are left out."""
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def states_and_gradients(model, inputs: dict) -> tuple:
    """Every hidden state of an encoder, and the gradients of a loss over the real tokens' last hidden states.

    The loss is a fixed random readout: a sum of squares of a LayerNorm's output is nearly constant, so its gradients
    below that LayerNorm would be rounding noise that any two kernels match.
    """
    model.zero_grad()
    out = model(**inputs, output_hidden_states=True)
    last = out.last_hidden_state
    readout = torch.randn(last.shape, generator=torch.Generator().manual_seed(0), dtype=last.dtype)
    (last * inputs["attention_mask"][..., None] * readout).sum().backward()
    return out.hidden_states, gradients(model)


def loss_and_gradients(model, inputs: dict) -> tuple:
    """A head's own loss on `inputs` (which hold its labels), and the gradients it gives."""
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), gradients(model)


def assert_close_by_name(actual, expected, **tolerances):
    """The same names on both sides (parameters, gradients, weights, a model's outputs), and each tensor close to its
    reference; a mismatch names its tensor and keeps assert_close's report."""
    assert actual.keys() == expected.keys()
    for name in expected.keys():
        assert_close(actual[name], expected[name], msg=lambda message, name=name: f"{name}: {message}", **tolerances)


def top_mask_predictions(directory, text: str, top_k: int, **tokenizer_kwargs) -> tuple[list[int], list[float]]:
    """The saved masked LM's own top_k tokens and probabilities at the one mask in `text`, computed without a
    pipeline: what fill-mask must report for it."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForMaskedLM.from_pretrained(directory).eval()
    inputs = tokenizer(text, return_tensors="pt", **tokenizer_kwargs)
    (position,) = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0].tolist()
    with torch.no_grad():
        probabilities = model(**inputs).logits[0, position].softmax(-1)
    scores, tokens = probabilities.topk(top_k)
    return tokens.tolist(), scores.tolist()


def classifier_prediction(directory, text: str) -> dict:
    """The saved sequence classifier's own label (the softmax argmax) and its probability for `text`, computed without
    a pipeline: what text-classification must report for it."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        probabilities = model(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
    score, label = probabilities.max(-1)
    return {"label": model.config.id2label[label.item()], "score": score.item()}


# ---------------------------------------------------------------- subprocesses and the loopback Hub


# Put ahead of a subprocess's script: deberta_lite cannot be imported there, as on a machine with transformers alone.
WITHOUT_DEBERTA_LITE = """
import importlib.abc
import sys


class _BlockDebertaLite(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "deberta_lite" or name.startswith("deberta_lite."):
            raise ImportError("deberta_lite is blocked in this process")


sys.meta_path.insert(0, _BlockDebertaLite())
try:
    import deberta_lite  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("deberta_lite should not be importable here")
"""


def run_python(source: str, env: dict, cwd, *args, without_deberta_lite: bool = False) -> subprocess.CompletedProcess:
    """Run `source` as cwd/script.py in a fresh interpreter, with `args` as its argv; `without_deberta_lite` makes
    importing the package fail there, so only remote code can provide the model."""
    script = cwd / "script.py"
    script.write_text((WITHOUT_DEBERTA_LITE if without_deberta_lite else "") + textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def hub_env(url: str, home, token: bool = True) -> dict:
    """The environment of a subprocess that talks to the loopback Hub at `url` (the `hub` fixture), with its own
    caches under `home`: huggingface_hub reads HF_ENDPOINT when it is imported."""
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = "hf_test_token"
    return env


def mlm_labels(input_ids, attention_mask, seed=1):
    """About a third of the real tokens as targets, the rest ignored."""
    generator = torch.Generator().manual_seed(seed)
    keep = (torch.rand(input_ids.shape, generator=generator) < 0.35) & attention_mask.bool()
    return input_ids.masked_fill(~keep, -100)


def head_config(model_class, **overrides):
    """The tiny config with a label count the head accepts (question answering needs 2: start and end)."""
    return tiny_config(num_labels=2 if model_class is DebertaLiteForQuestionAnswering else 3, **overrides)


def head_inputs(model_class, config, labels: bool = True) -> dict:
    """A padded batch in the head's input layout, with the head's training targets when `labels`."""
    input_ids, attention_mask = padded_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    targets = {}
    if model_class is DebertaLiteForMaskedLM:
        targets["labels"] = mlm_labels(input_ids, attention_mask)
    elif model_class is DebertaLiteForSequenceClassification:
        targets["labels"] = torch.tensor([2, 0, 1]) % config.num_labels
    elif model_class is DebertaLiteForTokenClassification:
        targets["labels"] = (input_ids % config.num_labels).masked_fill(attention_mask == 0, -100)
    elif model_class is DebertaLiteForQuestionAnswering:
        targets.update(start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([3, 5, 4]))
    elif model_class is DebertaLiteForMultipleChoice:  # 2 questions with 3 choices each
        input_ids, attention_mask = padded_batch(batch=6)
        inputs = dict(input_ids=input_ids.view(2, 3, -1), attention_mask=attention_mask.view(2, 3, -1))
        targets["labels"] = torch.tensor([2, 0])
    elif model_class is DebertaLiteForReplacedTokenDetection:  # 1 replaced, 0 original, padding ignored
        targets["labels"] = (input_ids % 3 == 0).long().masked_fill(attention_mask == 0, -100)
    return {**inputs, **targets} if labels else inputs


# ---------------------------------------------------------------- replaced token detection (deberta_lite.rtd)


# [PAD] is 0 (padded_batch's padding); padded_batch draws tokens from 3 up, so [CLS] and [SEP] stand only where
# rtd_batch puts them.
CLS_ID, SEP_ID, MASK_ID = 1, 2, 3
RTD_SPECIAL_IDS = (0, CLS_ID, SEP_ID)


def rtd_batch(vocab_size: int = 100, seed: int = 0) -> dict:
    """padded_batch() as the MLM collator leaves it: [CLS] first and [SEP] last in every row, about a third of the
    other real tokens masked ([MASK] in input_ids, the original id in labels, -100 elsewhere), and the
    special_tokens_mask of [CLS], [SEP] and padding."""
    input_ids, attention_mask = padded_batch(vocab_size=vocab_size, seed=seed)
    rows = torch.arange(len(input_ids))
    input_ids[:, 0] = CLS_ID
    input_ids[rows, attention_mask.sum(-1) - 1] = SEP_ID
    special = torch.isin(input_ids, torch.tensor(RTD_SPECIAL_IDS))
    labels = mlm_labels(input_ids, attention_mask, seed=seed + 1).masked_fill(special, -100)
    return dict(
        input_ids=input_ids.masked_fill(labels != -100, MASK_ID),
        attention_mask=attention_mask,
        labels=labels,
        special_tokens_mask=special.long(),
    )


# ---------------------------------------------------------------- short CPU runs of the scripts


def free_port() -> int:
    """A free TCP port on the loopback interface, for a multi-process launch's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config: str, script, args: list[str], cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of `script` on 2 CPU processes with configs/accelerate/<config>; asserts it succeeded."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / config),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def pretraining_args(tokenizer_dir, output_dir, *extra) -> list[str]:
    """The options of a short, seeded CPU run of scripts/pretrain_mlm.py or scripts/pretrain_rtd.py."""
    return [
        "--tokenizer_name",
        str(tokenizer_dir),
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "--report_to",
        "none",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--max_eval_samples",
        "48",
        "--seed",
        "7",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def resumable_run_args(tokenizer_dir, output_dir, *extra) -> list[str]:
    """`pretraining_args` for 6 training steps on 64 blocks, a checkpoint every 2 steps: a run to kill and resume."""
    return pretraining_args(
        tokenizer_dir,
        output_dir,
        "--do_train",
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        "--learning_rate",
        "1e-3",
        "--masking",
        "ngram",
        "--max_train_samples",
        "64",
        *extra,
    )


def document_packing_run_args(tokenizer_dir, output_dir) -> list[str]:
    """`pretraining_args` for 2 training steps and one evaluation batch of 16 blocks, with `--packing documents`."""
    return pretraining_args(
        tokenizer_dir,
        output_dir,
        "--packing",
        "documents",
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
        "--max_eval_samples",
        "16",
        "--save_strategy",
        "no",
    )


# Runs scripts/{script}.py and kills itself with SIGKILL: during the KILL_SAVE-th checkpoint save, after its files are
# written and before its marker is, or at the start of training step KILL_STEP.
KILLING_DRIVER = """
import os, signal, sys
sys.path.insert(0, {scripts!r})
from deberta_lite import checkpoints, pretraining

kill_save, kill_step = int(os.environ.get("KILL_SAVE", 0)), int(os.environ.get("KILL_STEP", 0))
saves, steps = [], []
mark_complete, training_step = checkpoints.mark_complete, pretraining.MaskingTrainer.training_step

def mark_or_die(directory):
    saves.append(directory)
    if len(saves) == kill_save:
        os.kill(os.getpid(), signal.SIGKILL)
    return mark_complete(directory)

def step_or_die(self, *args, **kwargs):
    steps.append(1)
    if len(steps) == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, *args, **kwargs)

checkpoints.mark_complete, pretraining.MaskingTrainer.training_step = mark_or_die, step_or_die
import {script}
{script}.main(sys.argv[1:])
"""


def run_and_kill(script: str, args: list[str], kill: dict, cwd) -> subprocess.CompletedProcess:
    """Run scripts/<script>.py (a pretraining script) with `args` in a fresh interpreter that kills itself with SIGKILL
    as `kill` says: {"KILL_SAVE": "n"} while the n-th checkpoint is saved (its files written, its completion marker
    not), {"KILL_STEP": "n"} at the start of training step n. Its return code is then -9."""
    source = KILLING_DRIVER.format(scripts=str(ROOT / "scripts"), script=script)
    return run_python(source, {**os.environ, **kill}, cwd, *args)


def pretraining_inputs(tokenizer_dir, output_dir, *extra) -> tuple:
    """What `run_pretraining` and `run_rtd_pretraining` take besides the model, set up as the scripts set it up from
    `pretraining_args(tokenizer_dir, output_dir, *extra)` on the bundled corpus: the tokenizer, the training
    arguments, the training blocks, the masked evaluation blocks and the masker."""
    _, data_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, TrainingArguments), pretraining_args(tokenizer_dir, output_dir, *extra)
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    train_dataset, eval_dataset, masker = pretraining_data(data_args, tokenizer, training_args, DATA / "wiki_sample")
    return tokenizer, training_args, train_dataset, eval_dataset, masker


class StopAtStep(TrainerCallback):
    """Ends training at the end of step `step` (`control.should_training_stop`); `steps` records the steps it saw
    end."""

    def __init__(self, step: int):
        self.step = step
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step >= self.step:
            control.should_training_stop = True


def record_position_ids(build, calls: list, *submodules: str):
    """A pretraining script's model builder (`build`), wrapped so that every forward of the model it builds (or of its
    `submodules`, by name) appends (name, training, input_ids, position_ids) to `calls`: what the model received."""

    def record(name, module, args, kwargs):
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        calls.append((name, module.training, input_ids.clone(), kwargs.get("position_ids")))

    def built(*args, **kwargs):
        model = build(*args, **kwargs)
        for name in submodules or ("",):
            model.get_submodule(name).register_forward_pre_hook(functools.partial(record, name), with_kwargs=True)
        return model

    return built
