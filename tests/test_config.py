import pytest
from transformers import AutoConfig

from hf_nanogpt import NanoGPTConfig


def test_defaults_are_nanogpts():
    c = NanoGPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50304, 1024, 12, 12, 768)
    assert (c.dropout, c.bias, c.activation_function, c.layer_norm_epsilon) == (0.0, True, "gelu", 1e-5)
    assert c.initializer_range == 0.02 and c.tie_word_embeddings is True and c.use_cache is True
    assert c.model_type == "nanogpt"


def test_attribute_map_standard_names():
    c = NanoGPTConfig(n_embd=64, n_head=4, n_layer=3, block_size=128)
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.max_position_embeddings) == (64, 4, 3, 128)
    c.hidden_size = 128  # writes go to the nanoGPT name
    assert c.n_embd == 128


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(n_embd=65, n_head=4), ("n_embd", "65", "n_head", "4")),
        (dict(n_layer=0), ("n_layer", "0")),
        (dict(n_head=-2), ("n_head", "-2")),
        (dict(vocab_size=0), ("vocab_size", "0")),
        (dict(block_size=0), ("block_size", "0")),
        (dict(n_embd=0), ("n_embd", "0")),
        (dict(dropout=1.0), ("dropout", "1.0")),
        (dict(dropout=-0.1), ("dropout", "-0.1")),
        (dict(activation_function="relu"), ("activation_function", "relu")),
        (dict(layer_norm_epsilon=0.0), ("layer_norm_epsilon", "0.0")),
    ],
)
def test_invalid_values_raise_valueerror_naming_field_and_value(kwargs, names):
    with pytest.raises(ValueError) as err:
        NanoGPTConfig(**kwargs)
    for name in names:
        assert name in str(err.value)


def test_int_dropout_accepted():
    assert NanoGPTConfig(dropout=0).dropout == 0


def test_roundtrip_and_autoconfig(tmp_path):
    c = NanoGPTConfig(
        vocab_size=78, n_layer=2, n_head=4, n_embd=64, block_size=64, bias=False, activation_function="gelu_new"
    )
    c.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is NanoGPTConfig
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == c.to_diff_dict() | {"_name_or_path": ""}
    assert (loaded.n_embd, loaded.bias, loaded.activation_function) == (64, False, "gelu_new")
