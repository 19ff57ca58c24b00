"""PEFT on DeBERTa-lite: PEFT's defaults and the DeBERTa LoRA recipe adapt the same modules as on transformers'
DebertaV2 of the same size; a LoRA adapter trains, saves, reloads and merges."""

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import DebertaV2ForSequenceClassification

from deberta_lite import DebertaLiteForSequenceClassification, DebertaLiteModel
from deberta_lite.convert import lite_config_to_deberta_v2

from helpers import padded_batch, tiny_config


# The usual DeBERTa LoRA recipe: the attention projections plus every `dense` (attention output, feed-forward in and
# out, pooler).
DEBERTA_RECIPE = ["query_proj", "key_proj", "value_proj", "dense"]

# DebertaV2's module paths in DeBERTa-lite's terms: the layers sit on the model, the projections on the attention.
V2_TO_LITE_PATHS = [("encoder.layer.", "layers."), ("attention.self.", "attention.")]

LAYERS = 4

# (PEFT config, how many modules it adapts in a 4-layer sequence classifier on DebertaV2)
PEFT_CONFIGS = {
    # PEFT's default for "deberta-v2": query_proj and value_proj of every layer.
    "lora-default": (lambda: LoraConfig(task_type="SEQ_CLS"), 2 * LAYERS),
    # Six linear layers per layer, plus the pooler's dense.
    "lora-deberta-recipe": (lambda: LoraConfig(task_type="SEQ_CLS", target_modules=DEBERTA_RECIPE), 6 * LAYERS + 1),
    # PEFT's IA3 default for "deberta-v2": key_proj, value_proj, and both output.dense as feed-forward modules.
    "ia3-default": (lambda: IA3Config(task_type="SEQ_CLS"), 4 * LAYERS),
}


def adapted_modules(model, peft_config) -> dict[str, tuple[str, bool | None]]:
    """Every module PEFT adapts: name relative to the model -> (adapter layer class, IA3's feed-forward flag)."""
    peft_model = get_peft_model(model, peft_config)
    return {
        name.removeprefix("base_model.model."): (type(module).__qualname__, getattr(module, "is_feedforward", None))
        for name, module in peft_model.named_modules()
        if isinstance(module, BaseTunerLayer)
    }


def v2_name_as_lite(name: str) -> str:
    for v2, lite in V2_TO_LITE_PATHS:
        name = name.replace(v2, lite)
    return name


@pytest.mark.parametrize("share_att_key", [True, False], ids=["shared-key", "own-position-projections"])
@pytest.mark.parametrize("peft_config", PEFT_CONFIGS)
def test_peft_adapts_the_modules_it_adapts_on_deberta_v2(peft_config, share_att_key):
    make_peft_config, expected_count = PEFT_CONFIGS[peft_config]
    config = tiny_config(num_hidden_layers=LAYERS, num_labels=3, share_att_key=share_att_key)
    ours = adapted_modules(DebertaLiteForSequenceClassification(config), make_peft_config())
    v2 = adapted_modules(DebertaV2ForSequenceClassification(lite_config_to_deberta_v2(config)), make_peft_config())

    assert len(v2) == expected_count
    assert ours == {v2_name_as_lite(name): kind for name, kind in v2.items()}


def test_lora_default_is_query_and_value_of_every_layer():
    ours = adapted_modules(
        DebertaLiteForSequenceClassification(tiny_config(num_hidden_layers=LAYERS)), LoraConfig(task_type="SEQ_CLS")
    )
    assert set(ours) == {
        f"deberta.layers.{i}.attention.{p}" for i in range(LAYERS) for p in ("query_proj", "value_proj")
    }


def test_lora_trains_saves_reloads_and_merges(tmp_path):
    # A pretrained encoder: the classifier's pooler and classifier are new, drawn at random when it loads.
    torch.manual_seed(0)
    DebertaLiteModel(tiny_config()).save_pretrained(tmp_path / "encoder")
    input_ids, attention_mask = padded_batch(batch=4)
    labels = torch.tensor([0, 1, 2, 1])

    def base_model(seed: int) -> DebertaLiteForSequenceClassification:
        torch.manual_seed(seed)
        return DebertaLiteForSequenceClassification.from_pretrained(tmp_path / "encoder", num_labels=3)

    # PEFT trains and saves the classifier of a SEQ_CLS model on its own; the pooler is new too.
    model = get_peft_model(
        base_model(seed=0), LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, modules_to_save=["pooler"])
    )
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any(".classifier.modules_to_save." in name for name in trainable)
    assert any(".pooler.modules_to_save." in name for name in trainable)
    frozen_query = model.base_model.model.deberta.layers[0].attention.query_proj.base_layer.weight.clone()

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()

    initial_loss = loss()
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-2)
    for _ in range(10):
        model.train()
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss() < 0.5 * initial_loss
    torch.testing.assert_close(
        model.base_model.model.deberta.layers[0].attention.query_proj.base_layer.weight, frozen_query, rtol=0, atol=0
    )
    # LoRA's B starts at zero: the adapters must have moved off it, or only the classifier learned.
    assert model.base_model.model.deberta.layers[0].attention.query_proj.lora_B["default"].weight.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        trained = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")

    # Another seed draws other heads: the adapter must bring back the trained pooler and classifier.
    reloaded = PeftModel.from_pretrained(base_model(seed=1), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, trained, rtol=0, atol=0
        )

    merged = reloaded.merge_and_unload()
    assert type(merged) is DebertaLiteForSequenceClassification
    assert not any(isinstance(module, BaseTunerLayer) for module in merged.modules())
    # The merged model is a plain checkpoint: no PEFT needed to load it.
    merged.save_pretrained(tmp_path / "merged")
    plain = DebertaLiteForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=input_ids, attention_mask=attention_mask).logits, trained, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            plain(input_ids=input_ids, attention_mask=attention_mask).logits, trained, rtol=0, atol=1e-5
        )
