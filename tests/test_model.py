"""The model itself: nanoGPT's parameter names and init, bad input, loss, backends, cache, checkpointing."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening, DynamicCache

from helpers import NANOGPT_FIXTURES, tiny_config, tiny_model
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM, NanoGPTModel
from hf_nanogpt.modeling_nanogpt import CACHE_NAME


def nanogpt_keys(n_layer: int, bias: bool) -> list[str]:
    """The state-dict keys nanoGPT's GPT class has (lm_head.weight is tied to wte)."""
    def p(name):
        return [f"{name}.weight"] + ([f"{name}.bias"] if bias else [])
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        keys += p(f"{h}.ln_1") + p(f"{h}.attn.c_attn") + p(f"{h}.attn.c_proj") + p(f"{h}.ln_2")
        keys += p(f"{h}.mlp.c_fc") + p(f"{h}.mlp.c_proj")
    return keys + p("transformer.ln_f") + ["lm_head.weight"]


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_are_nanogpts(bias):
    model = NanoGPTForCausalLM(tiny_config(bias=bias, n_layer=3))
    assert list(model.state_dict()) == nanogpt_keys(3, bias)


@pytest.mark.parametrize("name", ["A_char_nobias", "B_bpe_bias"])
def test_real_nanogpt_state_dict_loads_without_renaming(name):
    ckpt = torch.load(NANOGPT_FIXTURES / name / "ckpt.pt", weights_only=True)
    model = NanoGPTForCausalLM(NanoGPTConfig(**ckpt["model_args"]))
    result = model.load_state_dict(ckpt["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(ckpt["model"])
    for key, tensor in ckpt["model"].items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_lm_head_tied_to_wte():
    model = NanoGPTForCausalLM(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_init_follows_nanogpt():
    """normal(0, 0.02) everywhere, zero biases, LayerNorm (1, 0), and c_proj at 0.02/sqrt(2*n_layer)."""
    torch.manual_seed(0)
    n_layer = 8
    model = NanoGPTForCausalLM(NanoGPTConfig(vocab_size=512, block_size=256, n_layer=n_layer, n_head=4, n_embd=256))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - residual_std) < 0.1 * residual_std, (name, p.std().item())
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 0.002, (name, p.std().item())
            assert abs(p.mean().item()) < 0.002
        elif ".ln_" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name


def test_too_long_sequence_raises_valueerror():
    model = tiny_model()  # block_size 32
    with pytest.raises(ValueError, match=r"33.*block_size 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    # prompt plus cache: 30 cached + 3 new
    cache = DynamicCache(config=model.config)
    model(torch.zeros(1, 30, dtype=torch.long), past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"33.*block_size 32"):
        model(torch.zeros(1, 3, dtype=torch.long), past_key_values=cache, use_cache=True)


def test_generate_past_block_size_raises_valueerror():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size 32"):
        model.generate(torch.zeros(1, 30, dtype=torch.long), max_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_packed_sequences_get_the_logits_they_get_alone(attn, mode):
    """Padding-free batches (DataCollatorWithFlattening): one row of sequences longer together than
    block_size, position_ids restarting at 0 for each. Only the position ids must stay below block_size."""
    model = tiny_model(seed=21, attn_implementation=attn)  # block_size 32, dropout 0
    model.train(mode == "train")
    g = torch.Generator().manual_seed(22)
    seqs = [torch.randint(0, 96, (n,), generator=g) for n in (30, 25, 15)]  # 70 tokens in one row
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": s.tolist()} for s in seqs])
    assert batch["input_ids"].shape == (1, 70) and batch["position_ids"].max() == 29
    with torch.set_grad_enabled(mode == "train"):
        packed = model(**batch)
        alone = [model(s[None], labels=s[None]) for s in seqs]
    assert (packed.logits[0] - torch.cat([out.logits[0] for out in alone])).abs().max() <= 1e-5
    # the loss of the packed row is the token-weighted mean of the sequences' own losses
    expected = sum(out.loss * (len(s) - 1) for out, s in zip(alone, seqs)) / sum(len(s) - 1 for s in seqs)
    assert torch.allclose(packed.loss, expected, atol=1e-5)
    with pytest.raises(ValueError, match="position_ids"):  # a packed sequence may still not pass block_size
        model(torch.zeros(1, 40, dtype=torch.long), position_ids=torch.cat([torch.arange(33), torch.arange(7)])[None])


def test_cache_is_read_under_either_name_and_returned_under_the_running_releases():
    """transformers 5.24 renamed past_key_values to cache (see CACHE_NAME); remote code must take both."""
    model = tiny_model()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for name in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            first = model(ids[:, :8], use_cache=True, **{name: cache})
            assert getattr(first, CACHE_NAME) is cache and CACHE_NAME in first.keys()
            rest = model(ids[:, 8:], use_cache=True, **{name: cache})
            assert (torch.cat([first.logits, rest.logits], 1) - full).abs().max() <= 1e-5
        base = model.transformer(ids, use_cache=True)
        assert isinstance(getattr(base, CACHE_NAME), DynamicCache)


def test_a_cache_the_model_cannot_honour_raises():
    """Never silently wrong: a cache under an unknown name, two caches, a legacy tuple, or a decode step
    whose cache did not arrive (the 5.24 failure: the last token alone at position 0) raise."""
    model = tiny_model()
    ids = torch.randint(0, 96, (1, 6))
    with pytest.raises(TypeError, match="kv_cache="):
        model(ids, kv_cache=DynamicCache(config=model.config))
    with pytest.raises(ValueError, match="two KV caches"):
        model(ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))
    with pytest.raises(TypeError, match="transformers Cache"):
        model(ids, past_key_values=((torch.zeros(1, 4, 2, 8),) * 2,) * 2)
    with pytest.raises(ValueError, match="did not reach"):  # a 7-token mask, 1 new token, nothing cached
        model(ids[:, -1:], attention_mask=torch.ones(1, 7, dtype=torch.long))


@pytest.mark.parametrize("bad", [-1, 96, 10_000])
def test_token_ids_out_of_range_raise_valueerror(bad):
    model = tiny_model()  # vocab 96
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=r"vocab_size=96"):
        model(ids)


def test_position_ids_out_of_range_raise_valueerror():
    model = tiny_model()
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.tensor([[1, 2]]), position_ids=torch.tensor([[31, 32]]))


def test_exactly_one_of_ids_or_embeds():
    model = tiny_model()
    with pytest.raises(ValueError, match="exactly one"):
        model()


def test_loss_from_labels_is_shifted_inside_the_model():
    model = tiny_model()
    ids = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 96), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # -100 is ignored
    labels = ids.clone()
    labels[:, :10] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, 9:-1].reshape(-1, 96), ids[:, 10:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_inputs_embeds_match_input_ids():
    model = tiny_model()
    ids = torch.randint(0, 96, (2, 10))
    a = model(ids).logits
    b = model(inputs_embeds=model.transformer.wte(ids)).logits
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_eager_and_sdpa_agree(bias, activation):
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding in row 1
    eager = tiny_model(attn_implementation="eager", bias=bias, activation_function=activation)
    sdpa = tiny_model(attn_implementation="sdpa", bias=bias, activation_function=activation)
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        diff = (eager(ids).logits - sdpa(ids).logits).abs().max()
        assert diff <= 1e-5
        a, b = eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
        assert (a[0] - b[0]).abs().max() <= 1e-5 and (a[1, 7:] - b[1, 7:]).abs().max() <= 1e-5


def test_flex_attention_agrees_where_this_torch_allows_it():
    """flex_attention on CPU: no padding mask (torch 2.13's inductor fails on CPU with one)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(2))
    ref = tiny_model(attn_implementation="eager")(ids).logits
    model = tiny_model()
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_cache_matches_full_forward(attn):
    model = tiny_model(attn_implementation=attn)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        parts = [model(ids[:, :10], past_key_values=cache, use_cache=True).logits]
        for t in range(10, 24):  # one token at a time, as in decoding
            parts.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 24
    assert (torch.cat(parts, dim=1) - full).abs().max() <= 1e-5


def test_logits_to_keep():
    model = tiny_model()
    ids = torch.randint(0, 96, (2, 12))
    full = model(ids).logits
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 96) and torch.allclose(last, full[:, -1:], atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    grads, block_calls = [], []
    for checkpointing in (False, True):
        model = tiny_model(dropout=0.0).train()
        if checkpointing:
            # transformers >= 5.21 name; older 5.x releases call it gradient_checkpointing_enable
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        calls = []
        model.transformer.h[0].ln_1.register_forward_hook(lambda *_: calls.append(1))
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        block_calls.append(len(calls))
    assert block_calls == [1, 2]  # checkpointing re-runs the block's forward during backward
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_dropout_active_in_train_only():
    model = tiny_model(dropout=0.5)
    ids = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_hidden_states_and_attentions_are_captured():
    model = tiny_model(attn_implementation="eager")
    ids = torch.randint(0, 96, (2, 10))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == model.config.n_layer + 1
    assert len(out.attentions) == model.config.n_layer
    assert out.attentions[0].shape == (2, 4, 10, 10)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(2, 4, 10), atol=1e-5)


def test_base_model_is_the_trunk():
    model = tiny_model()
    assert isinstance(model.base_model, NanoGPTModel) and model.base_model is model.transformer
    out = model.transformer(torch.randint(0, 96, (1, 5)))
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_resize_token_embeddings_keeps_the_tie():
    model = tiny_model()
    model.resize_token_embeddings(80)
    assert model.config.vocab_size == 80
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.shape == (80, 32)
