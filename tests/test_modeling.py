"""The model on its own: relative positions, every attention kernel against eager (forward and gradients, padding,
long inputs, bf16), outputs and tuples, the task heads' losses, and bad input.

What belongs here: how DeBERTa-lite computes, checked against itself and hand-computed values. Agreement with
transformers' DebertaV2 is tests/test_parity.py's; the masked LM head and its enhanced mask decoder are
tests/test_masked_lm.py's; torch.compile is tests/test_compile.py's.
"""

import copy

import pytest
import torch
from torch.testing import assert_close
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position as v2_relative_position
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position as v2_log_bucket

from deberta_lite import (
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
)
from deberta_lite.attention import build_relative_lookup, far_field_distance, make_log_bucket_position, relative_index

from helpers import (
    assert_close_by_name,
    full_relative_index,
    gradients,
    padded_batch,
    padded_inputs,
    states_and_gradients,
    tiny_config,
)


VARIANTS = {
    "v3": {},
    "v1": dict(
        position_buckets=-1,
        share_att_key=False,
        pos_att_type="c2p|p2c",
        norm_rel_ebd="none",
        position_biased_input=True,
    ),
    "conv": dict(conv_kernel_size=3, conv_act="gelu"),
    "embed_proj_token_types": dict(embedding_size=16, type_vocab_size=2),
    "c2p_only": dict(pos_att_type=["c2p"]),
    "p2c_only_unshared": dict(pos_att_type=["p2c"], share_att_key=False),
}


def with_backend(model, backend):
    model.set_attn_implementation(backend)
    return model.eval()


# ---------------------------------------------------------------- relative positions


def test_log_buckets_reference_values():
    distances = torch.tensor([0, 5, 128, 129, 200, 300, 511, -200, -511])
    buckets = make_log_bucket_position(distances, bucket_size=256, max_position=512)
    assert buckets.tolist() == [0, 5, 128, 129, 169, 207, 255, -169, -255]


def test_log_buckets_match_debertav2_everywhere():
    distances = torch.arange(-3000, 3001)
    for bucket_size, max_position in [(256, 512), (8, 32), (32, 128)]:
        ours = make_log_bucket_position(distances, bucket_size, max_position)
        theirs = v2_log_bucket(distances, bucket_size, max_position).long()
        assert torch.equal(ours, theirs)


def test_relative_index_is_clamped_bucket_plus_span():
    config = tiny_config(position_buckets=-1, max_relative_positions=4)
    index = full_relative_index(6, 6, config)
    expected = torch.tensor([[min(max(i - j + 4, 0), 7) for j in range(6)] for i in range(6)])
    assert torch.equal(index, expected)


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(position_buckets=-1, max_relative_positions=20), dict(position_buckets=256, max_relative_positions=512)],
)
@pytest.mark.parametrize("query_size, key_size", [(7, 7), (5, 9), (9, 5), (700, 700)])
def test_relative_index_equals_debertav2(overrides, query_size, key_size):
    config = tiny_config(**overrides)
    span = config.att_span
    relative = v2_relative_position(
        torch.zeros(1, query_size, 1),
        torch.zeros(1, key_size, 1),
        bucket_size=config.position_buckets,
        max_position=config.effective_max_relative_positions,
    )[0]
    expected = torch.clamp(relative + span, 0, 2 * span - 1)
    assert torch.equal(full_relative_index(query_size, key_size, config), expected)
    lookup = build_relative_lookup(query_size, key_size, config, torch.device("cpu"))
    block = relative_index(lookup, key_size, torch.arange(2, 4), slice(1, 5), keys_first=True)
    assert torch.equal(block, expected[2:4, 1:5].T)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, None),
        (dict(position_buckets=-1, max_relative_positions=20), 20),
        (dict(position_buckets=256, max_relative_positions=512), 512),  # DeBERTa-v3
    ],
)
def test_far_field_distance_is_where_the_index_stops_changing(overrides, expected):
    config = tiny_config(**overrides)
    distance = far_field_distance(config)
    if expected is not None:
        assert distance == expected
    index = full_relative_index(3000, 3000, config)
    first, last = 0, 2 * config.att_span - 1
    i, j = torch.meshgrid(torch.arange(3000), torch.arange(3000), indexing="ij")
    assert bool((index[i - j >= distance] == last).all()) and bool((index[j - i >= distance] == first).all())
    nearer = index[(i - j).abs() == distance - 1]
    assert not bool(((nearer == first) | (nearer == last)).all())  # one step nearer, some pair still varies


# ---------------------------------------------------------------- attention backends


# The other kernels that train, each against eager. deberta_chunked in blocks of 5 query rows over 12: three blocks,
# the last one short.
TRAINING_KERNELS = {"sdpa": {}, "deberta_chunked": {"attention_chunk_size": 5}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("backend", sorted(TRAINING_KERNELS))
def test_kernel_equals_eager_forward_and_gradients(backend, variant):
    config = tiny_config(**VARIANTS[variant])
    model = DebertaLiteModel(config).train()  # dropout is 0 in the tiny config: train mode, deterministic
    inputs = padded_inputs(config)
    model.set_attn_implementation("eager")
    eager_states, eager_grads = states_and_gradients(model, inputs)
    model.set_attn_implementation(backend)
    states, grads = states_and_gradients(model, {**inputs, **TRAINING_KERNELS[backend]})
    assert len(eager_states) == config.num_hidden_layers + 1
    for eager, state in zip(eager_states, states, strict=True):
        assert_close(state, eager, atol=1e-5, rtol=1e-5)
    assert len(eager_grads) > 10
    assert_close_by_name(grads, eager_grads, atol=1e-5, rtol=1e-5)


def test_default_backend_is_sdpa_and_eager_can_be_requested(tmp_path):
    model = DebertaLiteModel(tiny_config())
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    eager = DebertaLiteModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_fully_padded_row_is_finite(backend):
    model = with_backend(DebertaLiteForSequenceClassification(tiny_config(conv_kernel_size=3)), backend)
    input_ids, attention_mask = padded_batch()
    attention_mask[1] = 0
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(state).all() for state in out.hidden_states)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_appended_padding_leaves_real_tokens_unchanged(backend):
    model = with_backend(DebertaLiteModel(tiny_config(**VARIANTS["conv"])), backend)
    input_ids, attention_mask = padded_batch(length=10)
    short = model(input_ids, attention_mask=attention_mask).last_hidden_state
    longer_ids = torch.cat([input_ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    longer_mask = torch.cat([attention_mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    longer = model(longer_ids, attention_mask=longer_mask).last_hidden_state[:, :10]
    keep = attention_mask.bool()
    assert_close(longer[keep], short[keep], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- outputs


def test_attentions_and_hidden_states_and_tuples():
    config = tiny_config()
    model = with_backend(DebertaLiteModel(config), "eager")
    input_ids, attention_mask = padded_batch()
    out = model(input_ids, attention_mask=attention_mask, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == config.num_hidden_layers and len(out.hidden_states) == config.num_hidden_layers + 1
    for weights in out.attentions:
        assert weights.shape == (3, config.num_attention_heads, 12, 12)
        assert_close(weights.sum(-1), torch.ones(3, config.num_attention_heads, 12))
        # Real queries never attend to padding keys.
        assert weights[0, :, 0, attention_mask[0] == 0].abs().max() == 0
    embeddings = model.embeddings(input_ids, None, None, None, attention_mask)
    assert_close(out.hidden_states[0], embeddings)
    assert_close(out.hidden_states[-1], out.last_hidden_state)
    as_tuple = model(input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert_close(as_tuple[0], out.last_hidden_state)
    head = DebertaLiteForSequenceClassification(config).eval()
    head_tuple = head(input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 1]), return_dict=False)
    assert isinstance(head_tuple, tuple) and head_tuple[0].dim() == 0 and head_tuple[1].shape == (3, 2)


def test_bare_encoder_has_no_length_cap_without_absolute_input_positions():
    model = DebertaLiteModel(tiny_config()).eval()  # max_position_embeddings 64
    out = model(torch.randint(3, 100, (1, 100)))
    assert out.last_hidden_state.shape == (1, 100, 32) and torch.isfinite(out.last_hidden_state).all()


# ---------------------------------------------------------------- heads


def test_sequence_classification_losses_follow_problem_type():
    input_ids, attention_mask = padded_batch()
    single = DebertaLiteForSequenceClassification(tiny_config(num_labels=3)).eval()
    labels = torch.tensor([2, 0, 1])
    out = single(input_ids, attention_mask=attention_mask, labels=labels)
    # Inferred per call and not written back: a config that changed after the first step would recompile.
    assert single.config.problem_type is None
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))

    regression = DebertaLiteForSequenceClassification(tiny_config(num_labels=1)).eval()
    targets = torch.tensor([0.5, -1.0, 2.0])
    out = regression(input_ids, attention_mask=attention_mask, labels=targets)
    assert regression.config.problem_type is None
    assert_close(out.loss, ((out.logits.squeeze(-1) - targets) ** 2).mean())

    multi = DebertaLiteForSequenceClassification(tiny_config(num_labels=3)).eval()
    multi_labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = multi(input_ids, attention_mask=attention_mask, labels=multi_labels)
    assert multi.config.problem_type is None
    probabilities = torch.sigmoid(out.logits)
    expected = -(multi_labels * probabilities.log() + (1 - multi_labels) * (1 - probabilities).log()).mean()
    assert_close(out.loss, expected)


def test_sequence_classification_pools_first_token_through_context_pooler():
    model = DebertaLiteForSequenceClassification(tiny_config(num_labels=2)).eval()
    input_ids, attention_mask = padded_batch()
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    first = out.hidden_states[-1][:, 0]
    expected = model.classifier(torch.nn.functional.gelu(model.pooler.dense(first)))
    assert_close(out.logits, expected)


def test_token_classification_and_question_answering():
    input_ids, attention_mask = padded_batch()
    tokens = DebertaLiteForTokenClassification(tiny_config(num_labels=5)).eval()
    labels = torch.randint(0, 5, (3, 12)).masked_fill(attention_mask == 0, -100)
    out = tokens(input_ids, attention_mask=attention_mask, labels=labels)
    assert out.logits.shape == (3, 12, 5)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.view(-1, 5), labels.view(-1)))

    qa = DebertaLiteForQuestionAnswering(tiny_config()).eval()
    starts, ends = torch.tensor([1, 2, 50]), torch.tensor([3, 4, 60])  # the third answer lies outside: ignored
    out = qa(input_ids, attention_mask=attention_mask, start_positions=starts, end_positions=ends)
    assert out.start_logits.shape == out.end_logits.shape == (3, 12)
    expected = (
        torch.nn.functional.cross_entropy(out.start_logits[:2], starts[:2])
        + torch.nn.functional.cross_entropy(out.end_logits[:2], ends[:2])
    ) / 2
    assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="num_labels must be 2, got 3"):
        DebertaLiteForQuestionAnswering(tiny_config(num_labels=3))


def test_multiple_choice_scores_each_choice_independently():
    model = DebertaLiteForMultipleChoice(tiny_config()).eval()
    input_ids, attention_mask = padded_batch(batch=4)
    choices_ids, choices_mask = input_ids.view(2, 2, 12), attention_mask.view(2, 2, 12)
    labels = torch.tensor([1, 0])
    out = model(choices_ids, attention_mask=choices_mask, labels=labels)
    assert out.logits.shape == (2, 2)
    single = model(choices_ids[:, :1], attention_mask=choices_mask[:, :1]).logits  # one choice at a time
    assert_close(out.logits[:, :1], single)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make_kwargs, words",
    [
        (lambda ids, mask: dict(), ["exactly one", "input_ids", "inputs_embeds"]),
        (lambda ids, mask: dict(input_ids=ids, inputs_embeds=torch.zeros(3, 12, 32)), ["exactly one"]),
        (lambda ids, mask: dict(input_ids=ids, attention_mask=mask[:, :5]), ["attention_mask", "(3, 5)", "(3, 12)"]),
        (lambda ids, mask: dict(input_ids=ids, token_type_ids=mask[:2]), ["token_type_ids", "(2, 12)"]),
        (lambda ids, mask: dict(input_ids=ids.clone().fill_(100)), ["input_ids", "[0, 100)", "100"]),
        (lambda ids, mask: dict(input_ids=ids - 10), ["input_ids", "[0, 100)"]),
        (lambda ids, mask: dict(input_ids=ids, token_type_ids=mask * 2), ["token_type_ids", "[0, 2)"]),
        (lambda ids, mask: dict(input_ids=ids[0]), ["input_ids", "(batch, sequence)"]),
        (lambda ids, mask: dict(inputs_embeds=torch.zeros(3, 12, 7)), ["inputs_embeds", "embedding_size"]),
    ],
)
def test_bad_input_gets_a_clear_error(make_kwargs, words):
    model = DebertaLiteModel(tiny_config(type_vocab_size=2)).eval()
    input_ids, attention_mask = padded_batch()
    with pytest.raises(ValueError) as error:
        model(**make_kwargs(input_ids, attention_mask))
    for word in words:
        assert word in str(error.value)


def test_token_type_ids_are_ignored_without_a_token_type_table():
    model = DebertaLiteModel(tiny_config(type_vocab_size=0)).eval()
    input_ids, attention_mask = padded_batch()
    plain = model(input_ids, attention_mask=attention_mask).last_hidden_state
    typed = model(input_ids, attention_mask=attention_mask, token_type_ids=attention_mask * 5).last_hidden_state
    assert torch.equal(plain, typed)


def test_absolute_input_positions_cap_the_length():
    model = DebertaLiteModel(tiny_config(position_biased_input=True)).eval()
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(torch.randint(3, 100, (1, 65)))


# ---------------------------------------------------------------- memory-lean chunked kernel


def test_chunked_kernel_with_the_enhanced_mask_decoder():
    from deberta_lite import DebertaLiteForMaskedLM

    model = DebertaLiteForMaskedLM(tiny_config()).eval()
    input_ids, attention_mask = padded_batch()
    model.set_attn_implementation("eager")
    expected = model(input_ids, attention_mask=attention_mask).logits
    model.set_attn_implementation("deberta_chunked")
    actual = model(input_ids, attention_mask=attention_mask, attention_chunk_size=4).logits
    keep = attention_mask.bool()
    assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_flex_kernel_equals_eager_forward(variant):
    """flex_attention's score_mod reads the same tables. Forward only: torch has no flex backward on a CPU."""
    config = tiny_config(**VARIANTS[variant])
    model = DebertaLiteModel(config).eval()
    inputs = padded_inputs(config)
    outputs = {}
    for backend in ("eager", "deberta_flex"):
        model.set_attn_implementation(backend)
        with torch.no_grad():
            outputs[backend] = model(**inputs, output_hidden_states=True).hidden_states
    for eager, flex in zip(outputs["eager"], outputs["deberta_flex"], strict=True):
        assert_close(flex, eager, atol=1e-5, rtol=1e-5)


def test_flex_kernel_refuses_attention_dropout():
    model = DebertaLiteModel(tiny_config(attention_probs_dropout_prob=0.1)).train()
    model.set_attn_implementation("deberta_flex")
    with pytest.raises(ValueError, match="attention_probs_dropout_prob=0"):
        model(*padded_batch())


def test_default_backend_switches_to_the_chunked_kernel_for_long_inputs(monkeypatch):
    from deberta_lite import attention

    calls = []
    original = attention.DisentangledBias.full

    def counting_full(self, *args):
        calls.append(self.key_size)
        return original(self, *args)

    monkeypatch.setattr(attention.DisentangledBias, "full", counting_full)
    # sdpa by default; padded layout, so the kernel sees the padded length (unpadded, each row's own length decides)
    model = DebertaLiteModel(tiny_config(unpad_batches=False)).eval()
    length = attention.LEAN_ATTENTION_MIN_LENGTH
    input_ids = torch.randint(3, 100, (1, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -100:] = 0
    long_output = model(input_ids, attention_mask=attention_mask).last_hidden_state
    assert calls == []  # the full N x N bias was never built
    model(input_ids[:, :16])
    assert len(calls) == tiny_config().num_hidden_layers  # short inputs keep plain sdpa with the full bias
    model.set_attn_implementation("eager")
    eager = model(input_ids, attention_mask=attention_mask).last_hidden_state
    keep = attention_mask.bool()
    assert_close(long_output[keep], eager[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_far_field_equals_eager(variant, monkeypatch):
    """At inference, keys beyond the relative table's reach go through plain attention on an extended Q and K,
    merged with the band's softmax: equal to eager at every position (padded ones too), left and right padding."""
    from deberta_lite import attention

    blocks, original = [], attention.FarField.block

    def counting_block(self, start, end):
        blocks.append((start, end))
        return original(self, start, end)

    monkeypatch.setattr(attention.FarField, "block", counting_block)
    config = tiny_config(**VARIANTS[variant])
    model = DebertaLiteModel(config).eval()
    length = 60  # > far distance + chunk: every block has far keys on one side at least
    assert length > model.layers[0].attention.far_distance + 4
    input_ids = torch.randint(3, 100, (3, length), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 41:] = 0  # right padding
    attention_mask[2, :23] = 0  # left padding
    states = {}
    for backend in ("eager", "deberta_chunked"):
        model.set_attn_implementation(backend)
        with torch.no_grad():
            out = model(input_ids, attention_mask=attention_mask, attention_chunk_size=4, output_hidden_states=True)
        states[backend] = out.hidden_states
    assert len(blocks) == config.num_hidden_layers * 15
    for eager, far in zip(states["eager"], states["deberta_chunked"], strict=True):
        assert_close(far, eager, atol=1e-5, rtol=1e-5)


def test_fused_and_explicit_attention_with_lse_agree(monkeypatch):
    from deberta_lite import attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, n, 8, generator=generator) for n in (5, 7, 7))
    bias = torch.randn(2, 1, 5, 7, generator=generator)
    fused = attention.attention_with_lse(query, key, value, bias, 0.3)
    monkeypatch.setattr(attention, "CPU_FLASH_WITH_LSE", None)
    explicit = attention.attention_with_lse(query, key, value, bias, 0.3)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=0.3)
    assert_close(explicit[0], reference, atol=1e-6, rtol=1e-6)
    assert_close(explicit[1], torch.logsumexp(query @ key.transpose(-1, -2) * 0.3 + bias, -1), atol=1e-6, rtol=1e-6)
    assert_close(fused[0], explicit[0], atol=1e-6, rtol=1e-6)
    assert_close(fused[1], explicit[1], atol=1e-6, rtol=1e-6)


def test_relative_projections_are_reused_in_inference_while_the_weights_are_unchanged():
    model = DebertaLiteModel(tiny_config()).eval()
    input_ids, attention_mask = padded_batch()
    table_projections = []  # key_proj projects the relative table (2-D input) and the keys (3-D input)
    model.layers[0].attention.key_proj.register_forward_hook(
        lambda module, args, output: table_projections.append(1) if args[0].dim() == 2 else None
    )

    def reference(model) -> torch.Tensor:  # with autograd on, nothing is reused
        fresh = DebertaLiteModel(model.config).to(model.dtype).eval()
        fresh.load_state_dict(model.state_dict())
        return fresh(input_ids, attention_mask=attention_mask).last_hidden_state.detach()

    with torch.inference_mode():
        first = model(input_ids, attention_mask=attention_mask).last_hidden_state
        second = model(input_ids, attention_mask=attention_mask).last_hidden_state
    assert len(table_projections) == 1
    assert torch.equal(first, second)
    assert_close(first, reference(model), atol=1e-6, rtol=1e-6)

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an optimizer-like in-place update of a projection and of the table
        for weight in (model.layers[0].attention.key_proj.weight, model.rel_embeddings.weight):
            weight.add_(torch.randn(weight.shape, generator=generator))
    with torch.inference_mode():
        updated = model(input_ids, attention_mask=attention_mask).last_hidden_state
    assert len(table_projections) == 2
    assert not torch.allclose(updated, first, atol=1e-3)
    assert_close(updated, reference(model), atol=1e-6, rtol=1e-6)

    copied = copy.deepcopy(model).double()  # a copy starts empty; a dtype move changes every weight's storage
    with torch.inference_mode():
        as_double = copied(input_ids, attention_mask=attention_mask).last_hidden_state
    assert as_double.dtype == torch.float64
    assert_close(as_double, reference(copied), atol=1e-10, rtol=1e-10)

    model.train()
    model(input_ids, attention_mask=attention_mask)
    assert model.layers[0].attention.relative_cache.value is None  # training holds nothing


def test_bf16_forward_and_backward_at_4096_stay_finite():
    model = DebertaLiteModel(tiny_config(hidden_dropout_prob=0.1)).to(torch.bfloat16).train()
    input_ids = torch.randint(3, 100, (1, 4096))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -300:] = 0
    out = model(input_ids, attention_mask=attention_mask).last_hidden_state  # long: the chunked kernel
    out.float().pow(2).mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_chunked_is_close_to_fp32_eager():
    """The documented bf16 tolerance: within 5e-2 of fp32 eager at the tiny size (bf16 keeps 8 bits of mantissa)."""
    model = DebertaLiteModel(tiny_config()).eval()
    input_ids, attention_mask = padded_batch()
    model.set_attn_implementation("eager")
    reference = model(input_ids, attention_mask=attention_mask).last_hidden_state
    model = model.to(torch.bfloat16)
    model.set_attn_implementation("deberta_chunked")
    actual = model(input_ids, attention_mask=attention_mask, attention_chunk_size=5).last_hidden_state
    keep = attention_mask.bool()
    assert_close(actual[keep].float(), reference[keep], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("length", [48, 2048])  # 2048: the default backend switches to the chunked kernel
def test_bf16_autocast_forward_and_backward_are_close_to_fp32(length):
    """Mixed precision as Trainer's --bf16 runs it: fp32 weights under autocast. Documented tolerance: outputs within
    5e-2 of fp32, gradients within 5% of the fp32 gradient's norm."""
    model = DebertaLiteModel(tiny_config()).train()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2 :] = 0
    results = []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids, attention_mask=attention_mask).last_hidden_state
        (out.float() * attention_mask[..., None]).pow(2).mean().backward()
        results.append((out.float(), gradients(model)))
    (reference, reference_grads), (mixed, mixed_grads) = results
    keep = attention_mask.bool()
    assert torch.isfinite(mixed).all()
    assert_close(mixed[keep], reference[keep], atol=5e-2, rtol=5e-2)
    assert reference_grads.keys() == mixed_grads.keys()
    for name, grad in reference_grads.items():
        assert torch.isfinite(mixed_grads[name]).all(), name
        assert (mixed_grads[name] - grad).norm() <= 0.05 * grad.norm() + 1e-6, name


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(position_buckets=-1, max_relative_positions=20),
        dict(position_buckets=256, max_relative_positions=512, max_position_embeddings=512),
    ],
)
@pytest.mark.parametrize("length", [1, 2, 7, 12, 64, 200, 300, 700])
def test_reachable_rows_are_exactly_the_rows_the_index_uses(overrides, length):
    from deberta_lite.attention import bucket_reach, reachable_rows

    config = tiny_config(**overrides)
    index = full_relative_index(length, length, config)
    assert reachable_rows(length, config, bucket_reach(config)) == (int(index.min()), int(index.max()))


@pytest.mark.parametrize("terms", ["c2p", "p2c", "both"])
@pytest.mark.parametrize("length", [1, 2, 9, 30])
def test_short_inputs_read_the_bias_along_diagonals_as_the_index_does(terms, length):
    """Tables with one row per distance (no two distances share a bucket) are read along shifted diagonals: the same
    bias as the gather through the index, and no table entry is modified by writing a mask into it."""
    from deberta_lite.attention import DisentangledBias, bucket_reach, reachable_rows

    config = tiny_config(position_buckets=64, max_relative_positions=128)
    first, last = reachable_rows(length, config, bucket_reach(config))
    lookup = build_relative_lookup(length, length, config, torch.device("cpu")) - first
    generator = torch.Generator().manual_seed(length)
    # Per-head tables laid out as the attention module makes them: (B, nh, N, rows) views of (nh, B, N, rows).
    tables = [torch.randn(4, 3, length, last - first + 1, generator=generator).transpose(0, 1) for _ in range(2)]
    c2p, p2c = (tables[0] if terms != "p2c" else None), (tables[1] if terms != "c2p" else None)
    kept = [table.clone() for table in tables]
    bias = DisentangledBias(c2p, p2c, lookup, torch.arange(length), length, far_field_distance(config))
    assert bias.reads_every_row_once()
    expected = bias.block(slice(0, length), slice(0, length))  # through relative_index and a gather
    lower = torch.ones(length, length, dtype=torch.bool).tril()
    full = bias.full(lower)
    assert torch.equal(full[..., lower], expected[..., lower])
    assert bool((full[..., ~lower] == torch.finfo(full.dtype).min).all())
    assert all(torch.equal(table, copy) for table, copy in zip(tables, kept, strict=True))
    # Past 32 tokens distances share buckets (64 buckets): the index is needed.
    long_lookup = build_relative_lookup(80, 80, config, torch.device("cpu"))
    first, last = reachable_rows(80, config, bucket_reach(config))
    rows = torch.randn(1, 1, 80, last - first + 1)
    assert not DisentangledBias(rows, rows, long_lookup - first, torch.arange(80), 80, 128).reads_every_row_once()
