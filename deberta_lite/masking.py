"""Masked-LM masking as the original DeBERTa does it: tokens, whole words, or n-grams of words.

Per sequence, round(mlm_probability x candidates) tokens are chosen (at least one), where candidates exclude special
and padding tokens. Units are tokens (`token`), words (`whole_word`: a word starts at a "▁" piece), or spans of
n consecutive words with p(n) proportional to 1/n, n <= max_ngram (`ngram`). Chosen tokens become [MASK] 80% of the
time, a random non-special token 10%, and stay unchanged 10%; labels are -100 everywhere else.
Randomness comes from torch's global generator, so Trainer's `--seed` makes it reproducible.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase


MASKING_STRATEGIES = ("token", "whole_word", "ngram")
WORD_START = "▁"


def word_units(pieces: list[str], candidate: list[bool]) -> list[list[int]]:
    """Group candidate token positions into words: a new word starts at a "▁" piece or after a non-candidate."""
    units: list[list[int]] = []
    previous_candidate = False
    for position, (piece, is_candidate) in enumerate(zip(pieces, candidate, strict=True)):
        if is_candidate:
            if piece.startswith(WORD_START) or not previous_candidate or not units:
                units.append([position])
            else:
                units[-1].append(position)
        previous_candidate = is_candidate
    return units


def choose_spans(units: list[list[int]], budget: int, max_ngram: int) -> list[int]:
    """Token positions of randomly placed spans of 1..max_ngram units (p(n) ∝ 1/n), up to `budget` tokens."""
    ngram_probabilities = torch.tensor([1.0 / n for n in range(1, max_ngram + 1)])
    chosen: set[int] = set()
    for start in torch.randperm(len(units)).tolist():
        if len(chosen) >= budget:
            break
        n = int(torch.multinomial(ngram_probabilities, 1)) + 1 if max_ngram > 1 else 1
        # Spans never overlap and never overshoot the budget: a span stops at the first unit that is taken already
        # or would overshoot (a long word is skipped rather than cut), so a free unit that fits is never passed over.
        span: list[int] = []
        for unit in units[start : start + n]:
            if not chosen.isdisjoint(unit) or len(chosen) + len(span) + len(unit) > budget:
                break
            span.extend(unit)
        chosen.update(span)
    return sorted(chosen)


@dataclass
class DataCollatorForDebertaMLM:
    """Pads a list of tokenised examples and masks them; returns input_ids, attention_mask, labels (and token types
    and position_ids, when the examples have them)."""

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    masking: Literal["token", "whole_word", "ngram"] = "token"
    max_ngram: int = 3
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.masking not in MASKING_STRATEGIES:
            raise ValueError(f"masking={self.masking!r} is invalid; allowed: {list(MASKING_STRATEGIES)}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram}")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must not exceed 1")
        if self.tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token, which masked LM needs")
        self._special_ids = set(self.tokenizer.all_special_ids)
        self._random_ids = torch.tensor([i for i in range(len(self.tokenizer)) if i not in self._special_ids])

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pad(examples)
        if "labels" not in batch:
            batch["input_ids"], batch["labels"] = self.mask_tokens(batch["input_ids"], batch["attention_mask"])
        return batch

    def pad(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pad without masking. Labels already present (a fixed evaluation set) are padded with -100; position_ids
        (packed documents: positions restarting at each document's start) pass through unmasked, padded with 0."""
        batch = self.tokenizer.pad(
            [{key: example[key] for key in ("input_ids", "token_type_ids") if key in example} for example in examples],
            return_tensors="pt",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        length = batch["input_ids"].shape[1]
        # Labels present here are a fixed evaluation set's, masked already: they are only padded. Padding's position
        # ids (0) do not matter: the attention mask leaves padding out.
        for key, filler in (("labels", -100), ("position_ids", 0)):
            if key in examples[0]:
                batch[key] = self._pad_column([example[key] for example in examples], length, filler)
        return dict(batch)

    def _pad_column(self, rows: list, length: int, filler: int) -> torch.Tensor:
        """Rows of a per-token column padded to `length` with `filler`, on the tokenizer's padding side."""
        left = self.tokenizer.padding_side == "left"
        padded = []
        for row in rows:
            fill = [filler] * (length - len(row))
            padded.append(fill + list(row) if left else list(row) + fill)
        return torch.tensor(padded, dtype=torch.long)

    def chosen_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """bool (B, N): the tokens to predict."""
        chosen = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (ids, keep) in enumerate(zip(input_ids.tolist(), attention_mask.tolist(), strict=True)):
            candidate = [bool(k) and token not in self._special_ids for token, k in zip(ids, keep, strict=True)]
            if self.masking == "token":
                units = [[position] for position, is_candidate in enumerate(candidate) if is_candidate]
            else:
                units = word_units(self.tokenizer.convert_ids_to_tokens(ids), candidate)
            if not units:
                continue
            budget = max(1, round(self.mlm_probability * sum(candidate)))
            max_ngram = self.max_ngram if self.masking == "ngram" else 1
            chosen[row, choose_spans(units, budget, max_ngram)] = True
        return chosen

    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.chosen_positions(input_ids, attention_mask)
        labels = input_ids.masked_fill(~chosen, -100)
        draw = torch.rand(input_ids.shape)
        to_mask = chosen & (draw < self.mask_replace_prob)
        to_random = chosen & ~to_mask & (draw < self.mask_replace_prob + self.random_replace_prob)
        masked = input_ids.masked_fill(to_mask, self.tokenizer.mask_token_id)
        random_tokens = self._random_ids[torch.randint(len(self._random_ids), input_ids.shape)]
        masked = torch.where(to_random, random_tokens, masked)
        return masked, labels
