"""DeBERTa-v3's pretraining: replaced token detection (RTD) with gradient-disentangled embedding sharing (GDES).

A small generator (a masked LM) fills the masked positions with tokens sampled from its softmax; a discriminator
labels every token of the result as original or replaced (He, Gao and Chen 2021, "DeBERTaV3: Improving DeBERTa
using ELECTRA-Style Pre-Training with Gradient-Disentangled Embedding Sharing", arXiv:2111.09543). The loss is
mlm_loss + rtd_lambda * rtd_loss.

The two models share their token embeddings in one of three ways (`embedding_sharing`):

- "none": each model has its own table.
- "shared" (ELECTRA): one table, updated by both losses, which pull it in different directions.
- "gdes" (DeBERTa-v3, the default): the discriminator reads stop_grad(E_G) + E_delta, where E_G is the generator's
  table and E_delta, a table of the discriminator's own, starts at zero. The MLM loss alone updates E_G, the RTD
  loss alone updates E_delta.

Only the word table is shared (with `embedding_size` != `hidden_size`, the projections stay each model's own), and
the absolute position table too when both models have one (`position_biased_input=True`; a DeBERTa-v3 discriminator
has none). `ReplacedTokenDetectionModel.save_pretrained` writes two ordinary checkpoints, the discriminator's table
folded into one (E_G + E_delta): `AutoModelForPreTraining` loads the discriminator, `AutoModelForMaskedLM` the
generator.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.utils import ModelOutput

from .configuration_deberta_lite import DebertaLiteConfig
from .modeling_deberta_lite import DebertaLiteForMaskedLM, DebertaLiteForReplacedTokenDetection


EMBEDDING_SHARING = ("none", "shared", "gdes")
# The tables the two models share: the word table, and the absolute position table where both have one.
SHARED_TABLES = ("word_embeddings", "position_embeddings")
DISCRIMINATOR_DIR = "discriminator"
GENERATOR_DIR = "generator"


def generator_config(
    discriminator_config: DebertaLiteConfig, depth: float = 0.5, width: float = 1.0
) -> DebertaLiteConfig:
    """The generator's config: the discriminator's, with `depth` times its layers (at least one) and `width` times its
    attention heads (at least one), hidden_size and intermediate_size (ELECTRA's narrower generators).

    Heads keep the discriminator's head size, so hidden_size is the new head count times it. The vocabulary and
    `embedding_size` stay the discriminator's, as the two share their embeddings: a narrower generator projects its
    embeddings to its width (`embed_proj`). DeBERTa-v3 uses half the depth at full width.
    """
    if depth <= 0 or width <= 0:
        raise ValueError(f"depth and width must be positive, got depth={depth}, width={width}")
    heads = max(1, int(discriminator_config.num_attention_heads * width + 0.5))
    head_size = discriminator_config.hidden_size // discriminator_config.num_attention_heads
    hidden_size = heads * head_size
    values = {
        **discriminator_config.to_dict(),
        "num_hidden_layers": max(1, int(discriminator_config.num_hidden_layers * depth + 0.5)),
        "num_attention_heads": heads,
        "hidden_size": hidden_size,
        "intermediate_size": max(1, int(discriminator_config.intermediate_size * width + 0.5)),
        "embedding_size": discriminator_config.embedding_size,
        "pooler_hidden_size": hidden_size,
        "architectures": ["DebertaLiteForMaskedLM"],
    }
    return DebertaLiteConfig.from_dict(values)


@dataclass
class ReplacedTokenDetectionOutput(ModelOutput):
    """What `ReplacedTokenDetectionModel` returns.

    loss: mlm_loss + rtd_lambda * rtd_loss.
    mlm_loss: the generator's masked-LM loss (mean over the masked tokens).
    rtd_loss: the discriminator's binary cross-entropy (mean over the tokens it scores).
    generator_logits: (num_masked, vocab), the masked positions in row-major order.
    discriminator_logits: (B, N), the logit that each token was replaced.
    rtd_labels: (B, N), 1 replaced, 0 original, -100 padding and special tokens.
    """

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    rtd_loss: torch.Tensor | None = None
    generator_logits: torch.Tensor | None = None
    discriminator_logits: torch.Tensor | None = None
    rtd_labels: torch.Tensor | None = None


class GradientDisentangledTable(nn.Module):
    """The parametrization weight = stop_grad(source.weight) + delta: the discriminator's table under GDES.

    The parametrized parameter (`parametrizations.weight.original`) is E_delta. The source table (the generator's
    embedding module) is held in a tuple, so that it is not registered as a submodule a second time: the
    discriminator's parameters and state_dict hold E_delta only. Assigning a whole table to the parametrized weight
    stores its difference from the source (`right_inverse`), so a folded table can be unfolded again.
    """

    def __init__(self, source: nn.Embedding):
        super().__init__()
        self._source = (source,)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self._source[0].weight.detach() + delta

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - self._source[0].weight.detach()


def aliased_parameters(module: nn.Module) -> dict[str, str]:
    """Every name under which a parameter appears again (a tied or shared table) -> the name it first appears under."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _drop_aliases(module, state_dict, prefix, local_metadata):
    """state_dict post-hook: a shared tensor once, under its first name. safetensors refuses tensors that share
    memory, and Trainer saves a model that is not a PreTrainedModel as its plain state_dict."""
    for alias in aliased_parameters(module):
        state_dict.pop(prefix + alias, None)


def _restore_aliases(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """load_state_dict pre-hook: the names `_drop_aliases` left out, read from their first name, so strict loading
    (and Trainer's resume) finds every key."""
    for alias, name in aliased_parameters(module).items():
        if prefix + name in state_dict:
            state_dict.setdefault(prefix + alias, state_dict[prefix + name])


class ReplacedTokenDetectionModel(nn.Module):
    """Generator (DebertaLiteForMaskedLM) + discriminator (DebertaLiteForReplacedTokenDetection), with embedding
    sharing, trained together on mlm_loss + rtd_lambda * rtd_loss (the default is ELECTRA's weight, 50; Microsoft's
    DeBERTa scripts default to 10).

    `special_token_ids`: token ids the discriminator is not scored on ([CLS], [SEP], ...), for batches that carry no
    `special_tokens_mask` (the MLM collator's do not). Padding (attention_mask == 0) is never scored.

    A plain `nn.Module`: Trainer saves its checkpoints as the state_dict, where a table that the two models (or the
    generator's tied decoder) share is stored once and restored on load. The losses are means per batch, so Trainer
    scales them for gradient accumulation itself (`accepts_loss_kwargs = False`).

    Resize the vocabularies (`resize_token_embeddings`) before building it: the sharing binds the tables it finds.
    """

    accepts_loss_kwargs = False
    # Read by Trainer when a resumed checkpoint lacks keys; the state_dict of this model leaves none out.
    _keys_to_ignore_on_save = None

    def __init__(
        self,
        generator: DebertaLiteForMaskedLM,
        discriminator: DebertaLiteForReplacedTokenDetection,
        embedding_sharing: str = "gdes",
        rtd_lambda: float = 50.0,
        special_token_ids=(),
    ):
        super().__init__()
        if embedding_sharing not in EMBEDDING_SHARING:
            raise ValueError(f"embedding_sharing={embedding_sharing!r} is invalid; allowed: {list(EMBEDDING_SHARING)}")
        if not isinstance(generator, DebertaLiteForMaskedLM):
            raise TypeError(f"the generator must be a DebertaLiteForMaskedLM, got {type(generator).__name__}")
        if not isinstance(discriminator, DebertaLiteForReplacedTokenDetection):
            raise TypeError(
                f"the discriminator must be a DebertaLiteForReplacedTokenDetection, got {type(discriminator).__name__}"
            )
        if generator.config.vocab_size != discriminator.config.vocab_size:
            raise ValueError(
                f"the generator's vocab_size ({generator.config.vocab_size}) and the discriminator's "
                f"({discriminator.config.vocab_size}) differ: the discriminator reads the generator's samples"
            )
        self.generator = generator
        self.discriminator = discriminator
        self.embedding_sharing = embedding_sharing
        self.rtd_lambda = rtd_lambda
        # Not saved: it is an argument of the model, not a weight; a buffer moves to the model's device.
        self.register_buffer(
            "special_token_ids", torch.tensor(sorted(special_token_ids), dtype=torch.long), persistent=False
        )
        if embedding_sharing != "none":
            self._share_embeddings()
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_restore_aliases)

    def _share_embeddings(self):
        source, target = self.generator.deberta.embeddings, self.discriminator.deberta.embeddings
        for name in SHARED_TABLES:
            source_table, target_table = getattr(source, name), getattr(target, name)
            if source_table is None or target_table is None:
                continue  # a v3 discriminator has no position table; the generator's EMD reads its own
            if source_table.weight.shape != target_table.weight.shape:
                raise ValueError(
                    f"embedding_sharing={self.embedding_sharing!r} shares the {name} table, but the generator's is "
                    f"{tuple(source_table.weight.shape)} and the discriminator's {tuple(target_table.weight.shape)}: "
                    "give both the same vocab_size, embedding_size and max_position_embeddings (generator_config does)"
                )
            if self.embedding_sharing == "shared":
                setattr(target, name, source_table)
            else:
                parametrize.register_parametrization(target_table, "weight", GradientDisentangledTable(source_table))
                with torch.no_grad():  # E_delta = 0: the discriminator starts from the generator's table
                    target_table.parametrizations.weight.original.zero_()

    def sample_replacements(self, generator_logits: torch.Tensor) -> torch.Tensor:
        """One token per row of (num_masked, vocab) logits, drawn from their softmax (in fp32) with torch's global
        generator (which Trainer seeds and restores on resume). No gradient flows through the draw."""
        with torch.no_grad():
            return torch.multinomial(generator_logits.detach().float().softmax(-1), 1).squeeze(-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor,
        special_tokens_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> ReplacedTokenDetectionOutput:
        r"""input_ids: the masked ids, as the MLM collator makes them; labels: the original ids at the masked positions,
        -100 elsewhere; special_tokens_mask: 1 at tokens not to score (else `special_token_ids` decides);
        position_ids: packed documents' positions, restarting at 0 at each document's start, for both models. Other
        keyword arguments go to both models.

        position_ids is named here, not left to **kwargs, because Trainer keeps only the dataset columns that the
        forward's signature names."""
        masked = labels != -100
        generated = self.generator(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            labels=labels,
            sparse_prediction=True,
            **kwargs,
        )
        original_ids = torch.where(masked, labels, input_ids)
        replaced_ids = input_ids.clone()
        replaced_ids[masked] = self.sample_replacements(generated.logits)
        # A sample equal to the original token is an original token.
        rtd_labels = (replaced_ids != original_ids).long()
        ignored = torch.isin(original_ids, self.special_token_ids)
        if special_tokens_mask is not None:
            ignored |= special_tokens_mask.bool()
        if attention_mask is not None:
            ignored |= attention_mask == 0
        rtd_labels = rtd_labels.masked_fill(ignored, -100)
        detected = self.discriminator(
            replaced_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            labels=rtd_labels,
            **kwargs,
        )
        return ReplacedTokenDetectionOutput(
            loss=generated.loss + self.rtd_lambda * detected.loss,
            mlm_loss=generated.loss,
            rtd_loss=detected.loss,
            generator_logits=generated.logits,
            discriminator_logits=detected.logits,
            rtd_labels=rtd_labels,
        )

    def tie_weights(self):
        """Tie the generator's decoder to its token embeddings again, after code that makes new parameters:
        accelerate's FSDP2 preparation moves the model to the meta device, which unties them, then calls this. The
        shared and GDES tables need nothing: they hold the generator's embedding modules, not its tensors."""
        self.generator.tie_weights()

    def activation_checkpointing_enable(self, **kwargs):
        """Trainer's `--activation_checkpointing`, for both models."""
        self.generator.activation_checkpointing_enable(**kwargs)
        self.discriminator.activation_checkpointing_enable(**kwargs)

    def discriminator_for_saving(self) -> DebertaLiteForReplacedTokenDetection:
        """A copy of the discriminator as an ordinary DebertaLiteForReplacedTokenDetection: under GDES its tables
        hold E_G + E_delta (folded, no parametrization left); shared tables are copied."""
        discriminator = copy.deepcopy(self.discriminator)
        embeddings = discriminator.deberta.embeddings
        for name in SHARED_TABLES:
            table = getattr(embeddings, name)
            if table is not None and parametrize.is_parametrized(table, "weight"):
                # A new plain table rather than remove_parametrizations on the copy: a deep copy shares the class
                # torch made for the parametrized module, and removing the parametrization deletes the `weight`
                # property from that class, which would break the model being trained.
                folded = table.weight.detach().clone()
                setattr(
                    embeddings, name, nn.Embedding.from_pretrained(folded, freeze=False, padding_idx=table.padding_idx)
                )
        return discriminator

    def save_pretrained(self, output_dir, **kwargs):
        """output_dir/discriminator (AutoModelForPreTraining) and output_dir/generator (AutoModelForMaskedLM), each an
        ordinary DeBERTa-lite checkpoint; keyword arguments go to both `save_pretrained` calls."""
        output_dir = Path(output_dir)
        self.discriminator_for_saving().save_pretrained(output_dir / DISCRIMINATOR_DIR, **kwargs)
        self.generator.save_pretrained(output_dir / GENERATOR_DIR, **kwargs)


__all__ = [
    "DISCRIMINATOR_DIR",
    "EMBEDDING_SHARING",
    "GENERATOR_DIR",
    "ReplacedTokenDetectionModel",
    "ReplacedTokenDetectionOutput",
    "generator_config",
]
