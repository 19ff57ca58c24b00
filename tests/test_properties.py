"""Property tests (hypothesis): relative-position bucketing, masking invariants, and the model over random shapes.

Derandomized, so every run draws the same examples: the suite stays deterministic.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deberta_lite import DebertaLiteModel
from deberta_lite.attention import make_log_bucket_position
from deberta_lite.masking import DataCollatorForDebertaMLM

from helpers import full_relative_index, tiny_config


PROPERTIES = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# Bucket sizes and the distance the last bucket is reached at, as the config allows them (max > buckets // 2 + 1).
bucket_settings = st.integers(2, 512).flatmap(
    lambda buckets: st.tuples(st.just(buckets), st.integers(buckets // 2 + 2, 4096))
)


def buckets_of(distances: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    return make_log_bucket_position(distances, buckets, max_position)


@PROPERTIES
@given(bucket_settings, st.lists(st.integers(-20000, 20000), min_size=1, max_size=64))
def test_buckets_are_antisymmetric(setting, distances):
    buckets, max_position = setting
    distances = torch.tensor(distances)
    assert torch.equal(buckets_of(-distances, buckets, max_position), -buckets_of(distances, buckets, max_position))


@PROPERTIES
@given(bucket_settings)
def test_buckets_are_exact_near_and_monotone_in_distance(setting):
    buckets, max_position = setting
    distances = torch.arange(0, 3 * max_position)
    bucketed = buckets_of(distances, buckets, max_position)
    mid = buckets // 2
    assert torch.equal(bucketed[: mid + 1], distances[: mid + 1])  # exact up to buckets // 2
    assert bool((bucketed[1:] >= bucketed[:-1]).all())  # never decreasing with |distance|
    # Every distance the log buckets are meant for lands strictly inside the table's k = buckets rows per side.
    assert int(bucketed[:max_position].max()) < buckets


@PROPERTIES
@given(
    st.integers(1, 96),
    st.integers(1, 96),
    st.sampled_from([(8, 32), (16, 20), (0, 16), (0, -1), (256, 512)]),
)
def test_relative_index_stays_inside_the_table(query_size, key_size, setting):
    buckets, max_relative = setting
    config = tiny_config(position_buckets=buckets, max_relative_positions=max_relative)
    index = full_relative_index(query_size, key_size, config)
    assert index.shape == (query_size, key_size)
    assert int(index.min()) >= 0 and int(index.max()) < 2 * config.att_span
    # The diagonal (distance 0) reads row k, the table's centre, for every bucketing.
    diagonal = index.diagonal()
    assert bool((diagonal == config.att_span).all())


class CharTokenizer:
    """The slice of a tokenizer the collator uses: ids 0-3 special, 4.. letters; every letter starts a word."""

    pad_token_id, mask_token_id, all_special_ids = 0, 3, [0, 1, 2, 3]
    padding_side = "right"

    def __len__(self):
        return 30

    def convert_ids_to_tokens(self, ids):
        return ["[S]" if i < 4 else "▁" + chr(ord("a") + i - 4) for i in ids]


@PROPERTIES
@given(
    st.lists(st.lists(st.integers(0, 29), min_size=1, max_size=40), min_size=1, max_size=6),
    st.sampled_from(["token", "whole_word", "ngram"]),
    st.floats(0.05, 0.6),
    st.integers(0, 2**31 - 1),
)
def test_masking_invariants(rows, strategy, probability, seed):
    collator = DataCollatorForDebertaMLM(CharTokenizer(), mlm_probability=probability, masking=strategy)
    length = max(map(len, rows))
    input_ids = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    torch.manual_seed(seed)
    masked, labels = collator.mask_tokens(input_ids, attention_mask)

    chosen = labels != -100
    candidate = (input_ids >= 4) & attention_mask.bool()
    assert not bool((chosen & ~candidate).any()), "a special or padding token was chosen"
    assert torch.equal(labels[chosen], input_ids[chosen])  # labels are the original tokens
    assert torch.equal(masked[~chosen], input_ids[~chosen])  # nothing else changes
    replaced = masked[chosen]
    assert bool(((replaced == 3) | (replaced >= 4)).all())  # [MASK] or a real token, never another special
    for row_chosen, row_candidate in zip(chosen, candidate, strict=True):
        count = int(row_candidate.sum())
        if count:  # round(p * candidates) tokens, at least one
            assert int(row_chosen.sum()) == max(1, round(probability * count))


def model_strategy():
    return st.tuples(
        st.integers(1, 4),  # batch
        st.integers(1, 40),  # real length of the longest row
        st.integers(1, 24),  # padding appended
        st.sampled_from(["eager", "sdpa", "deberta_chunked", "deberta_flex"]),
        st.sampled_from([dict(), dict(position_buckets=0), dict(pos_att_type=["c2p"]), dict(conv_kernel_size=3)]),
        st.integers(0, 2**31 - 1),
    )


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(overrides: dict, implementation: str) -> DebertaLiteModel:
        key = (tuple(sorted((k, str(v)) for k, v in overrides.items())), implementation)
        if key not in cache:
            torch.manual_seed(0)
            model = DebertaLiteModel(tiny_config(max_position_embeddings=128, **overrides)).eval()
            model.set_attn_implementation(implementation)
            cache[key] = model
        return cache[key]

    return get


@settings(PROPERTIES, max_examples=40)
@given(model_strategy())
def test_forward_is_finite_and_blind_to_appended_padding(models, case):
    batch, length, extra, implementation, overrides, seed = case
    model = models(overrides, implementation)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, model.config.vocab_size, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)

    kwargs = {"attention_chunk_size": 7} if implementation == "deberta_chunked" else {}
    with torch.no_grad():
        short = model(input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        padded = model(
            torch.nn.functional.pad(input_ids, (0, extra)),
            attention_mask=torch.nn.functional.pad(attention_mask, (0, extra)),
            **kwargs,
        ).last_hidden_state
    assert torch.isfinite(short).all() and torch.isfinite(padded).all()
    real = attention_mask.bool()
    torch.testing.assert_close(padded[:, :length][real], short[real], rtol=1e-5, atol=1e-5)
