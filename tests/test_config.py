import ast
import inspect

import pytest

from deberta_lite import DebertaLiteConfig, configuration_deberta_lite

from helpers import ROOT, tiny_config


ISSUE_FIELDS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "relative_attention",
    "max_relative_positions",
    "position_buckets",
    "pos_att_type",
    "share_att_key",
    "norm_rel_ebd",
    "position_biased_input",
    "embedding_size",
    "conv_kernel_size",
    "conv_groups",
    "conv_act",
    "pooler_hidden_size",
    "pooler_dropout",
    "pooler_hidden_act",
    "emd_num_layers",
]


def _declared_fields():
    """(name, has a docstring right after it) for every annotated field in the config class body."""
    tree = ast.parse(inspect.getsource(configuration_deberta_lite))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "DebertaLiteConfig").body
    fields = {}
    for statement, following in zip(body, body[1:] + [None], strict=True):
        if isinstance(statement, ast.AnnAssign):
            documented = (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip() != ""
            )
            fields[statement.target.id] = documented
    return fields


def test_every_field_declared_typed_and_documented():
    fields = _declared_fields()
    missing = [name for name in ISSUE_FIELDS if name not in fields]
    assert not missing, f"undeclared fields: {missing}"
    undocumented = [name for name, documented in fields.items() if not documented]
    assert not undocumented, f"fields without a one-line doc: {undocumented}"


def test_defaults_are_deberta_v3_base():
    config = DebertaLiteConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    assert config.vocab_size == 128100 and config.type_vocab_size == 0 and config.max_position_embeddings == 512
    assert config.position_buckets == 256 and config.att_span == 256 and config.share_att_key
    assert config.norm_rel_ebd == "layer_norm" and not config.position_biased_input
    assert sorted(config.pos_att_type) == ["c2p", "p2c"] and config.layer_norm_eps == 1e-7
    assert config.embedding_size == 768 and config.pooler_hidden_size == 768


def test_pos_att_type_string_is_normalised():
    assert tiny_config(pos_att_type="P2C | c2p").pos_att_type == ["p2c", "c2p"]


def test_att_span_falls_back_like_debertav2():
    assert tiny_config(position_buckets=-1, max_relative_positions=-1, max_position_embeddings=48).att_span == 48
    assert tiny_config(position_buckets=-1, max_relative_positions=20).att_span == 20
    assert tiny_config(position_buckets=8, max_relative_positions=20).att_span == 8


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(hidden_size=30), ["hidden_size", "num_attention_heads"]),
        (dict(pos_att_type=["p2c", "p2p"]), ["p2p", "c2p", "p2c"]),
        (dict(pos_att_type="c2p|bogus"), ["pos_att_type", "c2p", "p2c"]),
        (dict(pos_att_type=[]), ["pos_att_type"]),
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(num_hidden_layers=-1), ["num_hidden_layers"]),
        (dict(intermediate_size=0), ["intermediate_size"]),
        (dict(hidden_act="nope"), ["hidden_act", "gelu"]),
        (dict(conv_act="nope"), ["conv_act"]),
        (dict(pooler_hidden_act="nope"), ["pooler_hidden_act"]),
        (dict(norm_rel_ebd="rms"), ["norm_rel_ebd", "layer_norm"]),
        (dict(conv_kernel_size=2), ["conv_kernel_size"]),
        (dict(hidden_dropout_prob=1.5), ["hidden_dropout_prob"]),
        (dict(relative_attention=False), ["relative_attention"]),
        (dict(pad_token_id=500), ["pad_token_id"]),
        (dict(position_buckets=64, max_relative_positions=32), ["position_buckets", "max_relative_positions"]),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, words):
    with pytest.raises(ValueError) as error:
        tiny_config(**overrides)
    for word in words:
        assert word in str(error.value)


def test_save_load_round_trip(tmp_path):
    config = tiny_config(conv_kernel_size=3, emd_num_layers=1, pos_att_type="c2p")
    config.save_pretrained(tmp_path)
    loaded = DebertaLiteConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


SIZES = {  # DeBERTa-v3 sizes from the reference doc: hidden, layers, heads, FFN
    "xsmall": (384, 12, 6, 1536),
    "small": (768, 6, 12, 3072),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


@pytest.mark.parametrize("name", ["tiny", "mini", *SIZES])
def test_bundled_model_configs_load(name):
    config = DebertaLiteConfig.from_json_file(ROOT / "configs" / f"{name}.json")
    if name in SIZES:
        shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
        assert shape == SIZES[name]
        assert (config.vocab_size, config.position_buckets, config.max_relative_positions) == (128100, 256, 512)
        assert config.share_att_key and config.norm_rel_ebd == "layer_norm" and not config.position_biased_input
        assert config.type_vocab_size == 0 and config.max_position_embeddings == 512
    else:  # the test model and the quickstart model
        assert config.hidden_size <= 128 and config.num_hidden_layers <= 4
