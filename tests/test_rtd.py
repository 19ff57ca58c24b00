"""DeBERTa-v3's pretraining (deberta_lite.rtd): the generator's samples, the discriminator's labels, the two losses,
where each loss's gradient goes under every embedding-sharing mode, and the checkpoints a run writes and resumes."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.testing import assert_close
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    pipeline,
)

from deberta_lite import DebertaLiteConfig, DebertaLiteForMaskedLM, DebertaLiteForReplacedTokenDetection
from deberta_lite.rtd import EMBEDDING_SHARING, ReplacedTokenDetectionModel, generator_config

from helpers import CASES, RTD_SPECIAL_IDS, rtd_batch, tiny_config, top_mask_predictions


# Layouts of the pair: v3 (no position table in the discriminator), v1 (absolute positions in the input: both have a
# position table), a generator half as wide (it projects the shared table), and embedding_size != hidden_size.
LAYOUTS = {
    "v3": (CASES["v3"], 1.0),
    "v1": (CASES["v1"], 1.0),
    "narrow_generator": (CASES["v3"], 0.5),
    "embed_proj": (CASES["embed_proj"], 1.0),
}


def rtd_model(embedding_sharing: str, layout: str = "v3", seed: int = 0, **overrides) -> ReplacedTokenDetectionModel:
    case, width = LAYOUTS[layout]
    config = tiny_config(**{**case, **overrides})
    torch.manual_seed(seed)
    generator = DebertaLiteForMaskedLM(generator_config(config, width=width))
    discriminator = DebertaLiteForReplacedTokenDetection(config)
    return ReplacedTokenDetectionModel(generator, discriminator, embedding_sharing, special_token_ids=RTD_SPECIAL_IDS)


def discriminator_input(model, batch: dict, seed: int = 0):
    """The model's output on `batch`, and the ids its discriminator read (the masked positions sampled)."""
    seen = {}
    handle = model.discriminator.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(input_ids=args[0]), with_kwargs=True
    )
    torch.manual_seed(seed)
    out = model(**batch)
    handle.remove()
    return out, seen["input_ids"]


def train(model, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_generator_config_scales_depth_and_width():
    base = DebertaLiteConfig()  # DeBERTa-v3-base: 12 layers of 768, 12 heads of 64
    half = generator_config(base)
    assert (half.num_hidden_layers, half.hidden_size, half.num_attention_heads) == (6, 768, 12)
    assert half.architectures == ["DebertaLiteForMaskedLM"]
    third = generator_config(base, depth=1 / 3, width=1 / 3)
    assert (third.num_hidden_layers, third.hidden_size, third.num_attention_heads) == (4, 256, 4)
    assert (third.intermediate_size, third.embedding_size, third.vocab_size) == (1024, 768, 128100)
    assert generator_config(tiny_config(num_hidden_layers=1)).num_hidden_layers == 1
    with pytest.raises(ValueError, match="depth and width must be positive"):
        generator_config(base, depth=0)


def shared_tables(model) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """(name, the generator's table, the discriminator's own parameter for it: E_delta under GDES)."""
    source, target = model.generator.deberta.embeddings, model.discriminator.deberta.embeddings
    tables = []
    for name in ("word_embeddings", "position_embeddings"):
        if getattr(target, name) is None:
            continue
        table = getattr(target, name)
        own = table.parametrizations.weight.original if parametrize.is_parametrized(table) else table.weight
        tables.append((name, getattr(source, name).weight, own))
    return tables


def reached(param: nn.Parameter) -> bool:
    return param.grad is not None and bool(param.grad.abs().sum() > 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("embedding_sharing", EMBEDDING_SHARING)
def test_each_loss_reaches_the_tables_its_sharing_mode_gives_it(embedding_sharing, layout):
    model = rtd_model(embedding_sharing, layout)
    tables = shared_tables(model)
    # The discriminator has an absolute position table only when its input uses one (v1).
    assert [name for name, *_ in tables] == ["word_embeddings", "position_embeddings"][: 2 if layout == "v1" else 1]
    source, target = model.generator.deberta.embeddings, model.discriminator.deberta.embeddings
    if target.embed_proj is not None:  # the projections stay each model's own
        assert target.embed_proj.weight is not getattr(source.embed_proj, "weight", None)
    batch = rtd_batch()
    for name, generator_table, own in tables:
        if embedding_sharing == "shared":
            assert own is generator_table
        elif embedding_sharing == "gdes":  # E_delta starts at zero: the discriminator reads the generator's table
            assert not own.any() and torch.equal(getattr(target, name).weight, generator_table)

    losses = {}
    for loss_name in ("mlm_loss", "rtd_loss"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        getattr(model(**batch), loss_name).backward()
        losses[loss_name] = {name: (reached(generator_table), reached(own)) for name, generator_table, own in tables}
    for name, *_ in tables:
        if embedding_sharing == "shared":  # one table, both losses
            assert losses["mlm_loss"][name] == losses["rtd_loss"][name] == (True, True), name
        else:  # GDES: MLM updates E_G only, RTD updates E_delta only; none: each loss its own table
            assert losses["mlm_loss"][name] == (True, False), name
            assert losses["rtd_loss"][name] == (False, True), name


def test_rtd_labels_mark_exactly_the_replaced_tokens():
    model = rtd_model("gdes")
    batch = rtd_batch()
    out, replaced_ids = discriminator_input(model, batch)
    masked = batch["labels"] != -100
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    assert torch.equal(replaced_ids[~masked], batch["input_ids"][~masked])  # only masked positions are sampled
    ignored = torch.isin(original, torch.tensor(RTD_SPECIAL_IDS)) | (batch["attention_mask"] == 0)
    expected = (replaced_ids != original).long().masked_fill(ignored, -100)
    assert torch.equal(out.rtd_labels, expected)
    assert (expected == 1).any() and (expected[masked] == 0).sum() < masked.sum()
    # special_token_ids alone, or the batch's special_tokens_mask alone, leave out the same tokens.
    no_mask = {key: value for key, value in batch.items() if key != "special_tokens_mask"}
    assert torch.equal(discriminator_input(model, no_mask)[0].rtd_labels, expected)
    plain = ReplacedTokenDetectionModel(model.generator, model.discriminator, "none")
    assert torch.equal(discriminator_input(plain, batch)[0].rtd_labels, expected)
    assert (discriminator_input(plain, no_mask)[0].rtd_labels[:, 0] == 0).all()  # [CLS] scored without either


def test_replacements_are_drawn_from_the_generator_softmax():
    model = rtd_model("gdes")
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probabilities.log().expand(20000, 5).to(torch.bfloat16).requires_grad_()
    samples = model.sample_replacements(logits)
    assert samples.shape == (20000,) and not samples.requires_grad
    assert_close(torch.bincount(samples, minlength=5) / 20000, probabilities, atol=0.01, rtol=0)


def test_a_sample_equal_to_the_original_counts_as_original():
    model = rtd_model("gdes")
    batch = rtd_batch()
    masked = batch["labels"] != -100
    # Half of the masked tokens were a 7; the generator puts all its mass on 7.
    sevens = masked & (torch.rand(masked.shape, generator=torch.Generator().manual_seed(3)) < 0.5)
    batch["labels"] = batch["labels"].masked_fill(sevens, 7)
    assert sevens.any() and (masked & ~sevens).any()
    with torch.no_grad():
        model.generator.lm_head.decoder.bias[7] = 1e4
    out, replaced_ids = discriminator_input(model, batch)
    assert (replaced_ids[masked] == 7).all()
    assert torch.equal(out.rtd_labels[masked], (~sevens[masked]).long())


def test_loss_is_mlm_loss_plus_weighted_rtd_loss():
    model = rtd_model("gdes")
    model.rtd_lambda = 7.0
    batch = rtd_batch()
    out, replaced_ids = discriminator_input(model, batch)
    assert_close(out.loss, out.mlm_loss + 7.0 * out.rtd_loss)
    # The generator's own masked-LM loss, decoding every position
    dense = model.generator(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert_close(out.mlm_loss, dense.loss)
    assert_close(out.generator_logits, dense.logits[batch["labels"] != -100])
    # The discriminator's binary cross-entropy over the scored tokens, on the ids it read
    logits = model.discriminator(replaced_ids, attention_mask=batch["attention_mask"]).logits
    assert_close(out.discriminator_logits, logits)
    scored = out.rtd_labels != -100
    bce = nn.functional.binary_cross_entropy_with_logits(logits[scored], out.rtd_labels[scored].float())
    assert_close(out.rtd_loss, bce)


def test_a_few_steps_lower_the_loss():
    model = rtd_model("gdes")
    losses = train(model, rtd_batch(), steps=8, lr=3e-3)
    assert losses[-1] < 0.95 * losses[0], losses


def test_activation_checkpointing_reaches_both_models():
    model, reference = rtd_model("gdes"), rtd_model("gdes")
    model.activation_checkpointing_enable()
    assert model.generator.is_activation_checkpointing and model.discriminator.is_activation_checkpointing
    for each in (model, reference):
        torch.manual_seed(0)
        each(**rtd_batch()).loss.backward()
    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        assert_close(param.grad, expected[name].grad, msg=lambda message, name=name: f"{name}: {message}")


@pytest.mark.parametrize("embedding_sharing", EMBEDDING_SHARING)
def test_saved_checkpoints_are_the_trained_models(embedding_sharing, tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = rtd_model(embedding_sharing, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    batch = rtd_batch(vocab_size=len(tokenizer))
    train(model, batch, steps=3)
    if embedding_sharing == "gdes":
        assert shared_tables(model)[0][2].abs().max() > 0  # E_delta has moved from zero
    model.eval()
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        expected = model.discriminator(**inputs).logits
        folded = model.discriminator_for_saving()
        assert type(folded.deberta.embeddings.word_embeddings) is nn.Embedding
        assert torch.equal(folded(**inputs).logits, expected)

    model.save_pretrained(tmp_path)
    with torch.no_grad():  # the model in training is left as it was
        assert torch.equal(model.discriminator(**inputs).logits, expected)
    weights = load_file(tmp_path / "discriminator" / "model.safetensors")
    assert not any("parametrizations" in key for key in weights)
    loaded, info = AutoModelForPreTraining.from_pretrained(tmp_path / "discriminator", output_loading_info=True)
    assert isinstance(loaded, DebertaLiteForReplacedTokenDetection)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert_close(loaded.eval()(**inputs).logits, expected)

    tokenizer.save_pretrained(tmp_path / "generator")
    generator = AutoModelForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    assert generator.config.num_hidden_layers == 1
    with torch.no_grad():
        assert_close(generator(**inputs).logits, model.generator(**inputs).logits)
    text = f"The river {tokenizer.mask_token} north."
    predictions = pipeline("fill-mask", model=str(tmp_path / "generator"), top_k=3)(text)
    tokens, scores = top_mask_predictions(tmp_path / "generator", text, top_k=3)
    assert [p["token"] for p in predictions] == tokens
    assert [p["score"] for p in predictions] == pytest.approx(scores, rel=1e-5)


def test_a_folded_table_assigned_back_unfolds_into_e_delta():
    model = rtd_model("gdes")
    train(model, rtd_batch(), steps=2)
    folded = model.discriminator_for_saving().deberta.embeddings.word_embeddings.weight.detach()
    fresh = rtd_model("gdes", seed=1)
    fresh.generator.load_state_dict(model.generator.state_dict())
    fresh.discriminator.deberta.embeddings.word_embeddings.weight = folded
    _, generator_table, delta = shared_tables(fresh)[0]
    assert_close(delta, folded - generator_table.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("embedding_sharing", EMBEDDING_SHARING)
def test_state_dict_round_trips_through_safetensors(embedding_sharing, tmp_path):
    model = rtd_model(embedding_sharing, layout="v1")  # with a position table to share
    batch = rtd_batch()
    train(model, batch, steps=2)
    state = model.state_dict()
    if embedding_sharing == "shared":  # the shared tables once, under the generator's names
        assert not any(key.startswith("discriminator.deberta.embeddings.") and "_embeddings" in key for key in state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})  # as Trainer saves a plain module
    fresh = rtd_model(embedding_sharing, layout="v1", seed=1)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    generator = fresh.generator
    assert generator.lm_head.decoder.weight is generator.deberta.embeddings.word_embeddings.weight  # still tied
    expected = dict(model.named_parameters(remove_duplicate=False))
    for name, param in fresh.named_parameters(remove_duplicate=False):
        assert torch.equal(param, expected[name]), name
    out, again = discriminator_input(model, batch)[0], discriminator_input(fresh, batch)[0]
    for field in ("loss", "generator_logits", "discriminator_logits", "rtd_labels"):
        assert torch.equal(again[field], out[field]), field


def test_trainer_resumes_from_its_checkpoint(tmp_path, caplog):
    """Trainer saves the model's state_dict as model.safetensors and resumes by loading it (not strictly): a resumed
    run, from a differently initialised model, ends with the uninterrupted run's weights, and nothing is missing."""
    batch = rtd_batch()
    rows = [{key: value[i] for key, value in batch.items()} for i in range(3)] * 2

    def collate(examples):
        return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}

    def run(output_dir, seed, resume=None):
        args = TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=2,
            max_steps=4,
            save_steps=2,
            learning_rate=1e-2,
            seed=0,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        )
        model = rtd_model("gdes", seed=seed)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collate).train(resume)
        return model.state_dict()

    uninterrupted = run(tmp_path / "a", seed=0)
    assert (tmp_path / "a" / "checkpoint-2" / "model.safetensors").exists()
    trainer_logger = logging.getLogger("transformers.trainer")  # transformers' loggers do not propagate to pytest's
    trainer_logger.addHandler(caplog.handler)
    try:
        resumed = run(tmp_path / "b", seed=1, resume=str(tmp_path / "a" / "checkpoint-2"))
    finally:
        trainer_logger.removeHandler(caplog.handler)
    assert not [record.message for record in caplog.records if "keys" in record.message]
    assert uninterrupted.keys() == resumed.keys()
    for name, value in uninterrupted.items():
        assert_close(resumed[name], value, msg=lambda message, name=name: f"{name}: {message}")
