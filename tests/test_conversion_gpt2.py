"""GPT-2 <-> hf_nanogpt, on randomly initialised GPT-2s built and saved by transformers here."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from helpers import NANOGPT_FIXTURES, load_nanogpt_fixture
from hf_nanogpt import NanoGPTForCausalLM, cli
from hf_nanogpt.conversion.common import ConversionError
from hf_nanogpt.conversion.gpt2 import convert_gpt2, export_gpt2
from hf_nanogpt.tokenization import gpt2_tokenizer

# every GPT-2 size's layer and head structure, at a small width (head_dim 8)
VARIANTS = {"gpt2": (12, 12), "gpt2-medium": (24, 16), "gpt2-large": (36, 20), "gpt2-xl": (48, 25)}


def make_gpt2(folder, n_layer, n_head, seed=0, **config):
    torch.manual_seed(seed)
    kwargs = dict(n_layer=n_layer, n_head=n_head, n_embd=8 * n_head, n_positions=128, vocab_size=50257)
    kwargs.update(config)
    model = GPT2LMHeadModel(GPT2Config(**kwargs)).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def prompt():
    return torch.tensor([gpt2_tokenizer()("Hello, I'm a language model,").input_ids])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parity_with_gpt2lmheadmodel(tmp_path, variant, prompt):
    n_layer, n_head = VARIANTS[variant]
    gpt2 = make_gpt2(tmp_path / "src", n_layer, n_head, seed=n_layer)
    convert_gpt2(tmp_path / "src", tmp_path / "out")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert isinstance(ours, NanoGPTForCausalLM)
    c = ours.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, c.bias) == (
        n_layer,
        n_head,
        8 * n_head,
        128,
        50257,
        True,
    )
    assert c.activation_function == "gelu_new"
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids).logits - gpt2(ids).logits).abs().max() <= 1e-5
    ours_tokens = ours.generate(prompt, max_new_tokens=50, do_sample=False)
    gpt2_tokens = gpt2.generate(prompt, max_new_tokens=50, do_sample=False, pad_token_id=50256)
    assert torch.equal(ours_tokens, gpt2_tokens)


def test_settings_carried(tmp_path):
    make_gpt2(tmp_path / "src", 2, 4, layer_norm_epsilon=1e-6, activation_function="gelu_new")
    gpt2_tokenizer().save_pretrained(tmp_path / "src")
    GenerationConfig(
        bos_token_id=50256, eos_token_id=50256, do_sample=True, top_p=0.9, repetition_penalty=1.2
    ).save_pretrained(tmp_path / "src")
    assert cli.main(["convert", "gpt2", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_norm_epsilon"] == 1e-6 and config["block_size"] == 128
    gen = GenerationConfig.from_pretrained(tmp_path / "out")
    assert (gen.top_p, gen.repetition_penalty, gen.eos_token_id) == (0.9, 1.2, 50256)
    assert gen.max_length == 128 and gen.max_new_tokens is None  # the room left for any prompt
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("Hello world").input_ids == [15496, 995]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "GPT2LMHeadModel" in card and "gelu_new" in card


def test_pytorch_bin_with_hub_style_keys_and_buffers(tmp_path, prompt):
    """The Hub's original gpt2 weights: GPT2Model keys (no `transformer.` prefix) and attn.bias buffers."""
    gpt2 = make_gpt2(tmp_path / "ref", 2, 4)
    state = {k.removeprefix("transformer."): v for k, v in gpt2.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    torch.save(state, tmp_path / "src" / "pytorch_model.bin")
    convert_gpt2(tmp_path / "src", tmp_path / "out")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(
        ours.generate(prompt, max_new_tokens=20, do_sample=False),
        gpt2.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256),
    )


def test_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64)).eval()
    gpt2.save_pretrained(tmp_path / "src", max_shard_size="500KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    convert_gpt2(tmp_path / "src", tmp_path / "out")
    ids = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (
            AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits - gpt2(ids).logits
        ).abs().max() <= 1e-5


def test_gpt2_round_trip_is_exact(tmp_path):
    make_gpt2(tmp_path / "src", 3, 4)
    convert_gpt2(tmp_path / "src", tmp_path / "ours")
    assert cli.main(["export", "gpt2", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back = load_file(tmp_path / "back" / "model.safetensors")
    source = load_file(tmp_path / "src" / "model.safetensors")
    assert back.keys() == source.keys()
    for key, tensor in source.items():
        assert torch.equal(back[key], tensor), key
    assert json.loads((tmp_path / "back" / "config.json").read_text())["activation_function"] == "gelu_new"


@pytest.mark.parametrize("name", ["A_char_nobias", "B_bpe_bias"])
def test_nanogpt_fixtures_exported_to_gpt2_keep_nanogpts_logits(tmp_path, name):
    from hf_nanogpt.conversion.nanogpt import convert_nanogpt

    fixture = load_nanogpt_fixture(name)
    convert_nanogpt(NANOGPT_FIXTURES / name, tmp_path / "ours")
    export_gpt2(tmp_path / "ours", tmp_path / "gpt2")
    files = set(os.listdir(tmp_path / "gpt2"))
    assert not any(f.endswith(".py") for f in files)  # stock transformers, no custom code
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["vocab_size"] == fixture["ckpt"]["model_args"]["vocab_size"]  # padded vocab kept
    # llama.cpp's convert_hf_to_gguf.py reads the context length from n_ctx (a KeyError without it)
    assert config["n_ctx"] == config["n_positions"] == fixture["ckpt"]["model_args"]["block_size"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    assert type(model) is GPT2LMHeadModel
    if not fixture["ckpt"]["model_args"]["bias"]:
        assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0) and torch.all(model.transformer.ln_f.bias == 0)
    with torch.no_grad():
        logits = model(fixture["inputs"]["input_ids"]).logits
        short = model(fixture["inputs"]["input_ids_short"]).logits
    refs = fixture["refs"]
    if "logits" in refs:
        assert (logits - refs["logits"]).abs().max() <= 1e-5
    else:
        assert (logits[:, refs["positions"]] - refs["logits_at_positions"]).abs().max() <= 1e-5
    assert (short - refs["logits_short"]).abs().max() <= 1e-5
    tok = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    assert tok(fixture["greedy"]["prompt_text"]).input_ids == fixture["greedy"]["prompt_ids"]


# -- bad input ------------------------------------------------------------------------------------------


def test_not_gpt2(tmp_path):
    LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(ConversionError, match=r"config\.json: model_type is 'llama', expected 'gpt2'"):
        convert_gpt2(tmp_path / "llama", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["llama"]


def test_missing_weights_and_config(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2)
    os.remove(tmp_path / "src" / "model.safetensors")
    with pytest.raises(ConversionError, match=r"no weights found; expected one of \['model.safetensors'"):
        convert_gpt2(tmp_path / "src", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        convert_gpt2(tmp_path / "empty", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["empty", "src"]


def test_truncated_weights(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2)
    data = (tmp_path / "src" / "model.safetensors").read_bytes()
    (tmp_path / "src" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"model\.safetensors: unreadable weights"):
        convert_gpt2(tmp_path / "src", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_shapes_that_disagree_with_config(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["n_positions"] = 256
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"transformer\.wpe\.weight has shape \(128, 16\).*needs \(256, 16\)"):
        convert_gpt2(tmp_path / "src", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_unsupported_gpt2_settings(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2, n_inner=64)
    with pytest.raises(ConversionError, match="n_inner"):
        convert_gpt2(tmp_path / "src", tmp_path / "out")
    make_gpt2(tmp_path / "relu", 1, 2, activation_function="relu")
    with pytest.raises(ConversionError, match=r"config\.json.*activation_function.*'relu'"):
        convert_gpt2(tmp_path / "relu", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_id_without_network_says_how_to_pass_a_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # offline as HF_HUB_OFFLINE=1 makes it; huggingface_hub read the variable at import, so its constant is set
    # too (otherwise this would ask the test session's local Hub, when an earlier test has started it)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(ConversionError, match=r"Could not download 'gpt2-medium'.*pass the local folder"):
        convert_gpt2("gpt2-medium", tmp_path / "out")
    with pytest.raises(ConversionError, match="no such folder"):
        convert_gpt2("./does/not/exist", tmp_path / "out")


def test_output_needs_overwrite(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        convert_gpt2(tmp_path / "src", tmp_path / "out")
    with pytest.raises(FileExistsError):
        export_gpt2(tmp_path / "src", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["x"]


def test_export_refuses_non_nanogpt(tmp_path):
    make_gpt2(tmp_path / "src", 1, 2)
    with pytest.raises(ConversionError, match="expected a nanogpt model"):
        export_gpt2(tmp_path / "src", tmp_path / "out")
