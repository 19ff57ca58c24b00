"""Masking statistics on real text: rate, 80/10/10, specials never chosen, whole words and n-grams grouped."""

import itertools
from collections import Counter

import pytest
import torch

from deberta_lite.masking import DataCollatorForDebertaMLM, choose_spans, word_units
from deberta_lite.tokenization import read_text_files, train_unigram_tokenizer

from helpers import DATA


@pytest.fixture(scope="module")
def tokenizer():
    lines = list(itertools.islice(read_text_files([DATA / "wiki_sample" / "train.txt"]), 3000))
    return train_unigram_tokenizer(lines, vocab_size=2000)


@pytest.fixture(scope="module")
def examples(tokenizer):
    lines = [line for line in read_text_files([DATA / "wiki_sample" / "validation.txt"]) if len(line.split()) > 12]
    return [tokenizer(line, truncation=True, max_length=96) for line in lines[:300]]


def _words(tokenizer, ids, keep):
    special = set(tokenizer.all_special_ids)
    candidate = [bool(k) and i not in special for i, k in zip(ids, keep, strict=True)]
    return word_units(tokenizer.convert_ids_to_tokens(ids), candidate), candidate


def test_word_units_group_continuation_pieces():
    pieces = ["[CLS]", "▁The", "▁ri", "ver", "s", "▁flow", "[SEP]", "[PAD]"]
    candidate = [False, True, True, True, True, True, False, False]
    assert word_units(pieces, candidate) == [[1], [2, 3, 4], [5]]


def test_choose_spans_respects_budget_and_never_overlaps():
    torch.manual_seed(1)
    units = [[0], [1, 2], [3], [4, 5, 6], [7], [8], [9, 10]]
    for _ in range(50):
        chosen = choose_spans(units, budget=4, max_ngram=3)
        assert len(chosen) <= 4 and len(set(chosen)) == len(chosen)
        for unit in units:  # units are never split
            assert set(unit) <= set(chosen) or not set(unit) & set(chosen)


@pytest.mark.parametrize("masking", ["token", "whole_word", "ngram"])
def test_rate_specials_and_80_10_10(tokenizer, examples, masking):
    torch.manual_seed(0)
    collator = DataCollatorForDebertaMLM(tokenizer, masking=masking)
    batch = collator(examples)
    labels, input_ids, attention_mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    original = tokenizer.pad([{"input_ids": e["input_ids"]} for e in examples], return_tensors="pt")["input_ids"]
    chosen = labels != -100
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any() and not (chosen & (attention_mask == 0)).any()
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(input_ids[~chosen], original[~chosen])  # nothing else is touched
    rate = chosen.sum().item() / ((attention_mask == 1) & ~special).sum().item()
    assert (0.14 if masking == "token" else 0.12) <= rate <= 0.16, rate
    as_mask = (input_ids[chosen] == tokenizer.mask_token_id).float().mean().item()
    unchanged = (input_ids[chosen] == original[chosen]).float().mean().item()
    assert 0.75 <= as_mask <= 0.85 and 0.06 <= unchanged <= 0.14, (as_mask, unchanged)
    replaced = input_ids[chosen & (input_ids != tokenizer.mask_token_id) & (input_ids != original)]
    assert len(replaced) > 0 and not torch.isin(replaced, torch.tensor(tokenizer.all_special_ids)).any()


@pytest.mark.parametrize("masking", ["whole_word", "ngram"])
def test_whole_words_are_masked_together(tokenizer, examples, masking):
    torch.manual_seed(0)
    collator = DataCollatorForDebertaMLM(tokenizer, masking=masking)
    batch = collator(examples)
    original = tokenizer.pad([{"input_ids": e["input_ids"]} for e in examples], return_tensors="pt")["input_ids"]
    span_lengths = Counter()
    multi_piece_words = 0
    for ids, keep, labels in zip(
        original.tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist(), strict=True
    ):
        words, _ = _words(tokenizer, ids, keep)
        flags = []
        for word in words:
            chosen = [labels[p] != -100 for p in word]
            assert all(chosen) or not any(chosen), "a word was split"
            flags.append(chosen[0])
            multi_piece_words += len(word) > 1 and chosen[0]
        run = 0
        for flag in flags + [False]:  # lengths of runs of consecutive chosen words
            if flag:
                run += 1
            elif run:
                span_lengths[run] += 1
                run = 0
    assert multi_piece_words > 20
    if masking == "ngram":  # spans of 2 and 3 words occur, and single words are the most common
        assert span_lengths[2] > 0 and span_lengths[3] > 0 and span_lengths[1] > span_lengths[2]


@pytest.mark.parametrize("masking", ["token", "whole_word", "ngram"])
def test_position_ids_pass_through_aligned_and_unmasked(tokenizer, examples, masking):
    # Packed documents' positions: restarting at 0 every 7 tokens, rows of different lengths (so some padding).
    packed = [{**example, "position_ids": [i % 7 for i in range(len(example["input_ids"]))]} for example in examples]
    collator = DataCollatorForDebertaMLM(tokenizer, masking=masking)
    torch.manual_seed(0)
    batch = collator(packed)
    torch.manual_seed(0)
    without = collator(examples)
    length = batch["input_ids"].shape[1]
    expected = [[i % 7 for i in range(len(e["input_ids"]))] + [0] * (length - len(e["input_ids"])) for e in examples]
    assert batch["position_ids"].dtype == torch.long and batch["position_ids"].tolist() == expected
    # The same masks as without position_ids: they neither draw from the random stream nor get masked.
    assert torch.equal(batch["input_ids"], without["input_ids"]) and torch.equal(batch["labels"], without["labels"])
    assert "position_ids" not in without


def test_masking_is_reproducible_with_the_seed(tokenizer, examples):
    collator = DataCollatorForDebertaMLM(tokenizer, masking="ngram")
    torch.manual_seed(3)
    first = collator(examples[:20])
    torch.manual_seed(3)
    second = collator(examples[:20])
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])


def test_bad_masking_arguments(tokenizer):
    with pytest.raises(ValueError, match="masking"):
        DataCollatorForDebertaMLM(tokenizer, masking="span")
    with pytest.raises(ValueError, match="mlm_probability"):
        DataCollatorForDebertaMLM(tokenizer, mlm_probability=0)
