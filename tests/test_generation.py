"""generate(): caches, decoding strategies, padding, and the text-generation pipeline."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, GenerationConfig, StaticCache, pipeline

from helpers import tiny_model
from hf_nanogpt.modeling_nanogpt import CACHE_NAME
from hf_nanogpt.saving import generation_config_for, save_model_folder


def manual_greedy(model, ids: torch.Tensor, n: int, steps: list | None = None) -> torch.Tensor:
    """nanoGPT's generate with top_k=1: full forward each step, no cache (each step's logits into `steps`)."""
    for _ in range(n):
        logits = model(ids, use_cache=False).logits[:, -1]
        if steps is not None:
            steps.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(6))


def test_greedy_dynamic_cache_matches_no_cache_loop(model, prompt):
    with torch.no_grad():
        expected = manual_greedy(model, prompt, 20)
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)
    assert isinstance(getattr(out, CACHE_NAME), DynamicCache)
    assert torch.equal(out.sequences, expected)
    no_cache = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    assert torch.equal(no_cache, expected)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("padded", [False, True])
def test_cached_and_uncached_generation_give_the_same_logits(cache, padded):
    """Every step's logits, not only the argmax (a small random model often repeats one token either way),
    against generate without a cache and against full forwards outside generate."""
    model = tiny_model(seed=23, initializer_range=0.5)  # large weights: varied tokens, not one repeated
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(24))
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :3], mask[1, :3] = 0, 0  # row 1 left-padded
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=16,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    cached = model.generate(ids, cache_implementation=cache, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    # Equal to float32 rounding, which grows with the logits (up to about 11 with these large weights): a cached step
    # reduces in another order than a full forward (one query row against the cache, or the static cache's padded
    # keys), 1.04e-5 on an AMD EPYC. So float32's default rtol (1.3e-6, about 10 ulp) on top of atol 1e-5; a cache
    # bug is five orders larger (a position off by one moves these logits by 5, a dropped oldest token by 7).
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
    steps = []
    with torch.no_grad():
        manual_greedy(model, ids[:1], 16, steps)  # row 0 has no padding: plain forwards give its logits
    for a, b in zip(cached.logits, steps):
        torch.testing.assert_close(a[0], b[0], rtol=1.3e-6, atol=1e-5)
    assert len(set(cached.sequences[:, 7:].flatten().tolist())) > 4


def test_static_cache(model, prompt):
    expected = model.generate(prompt, max_new_tokens=20, do_sample=False)
    out = model.generate(
        prompt, max_new_tokens=20, do_sample=False, cache_implementation="static", return_dict_in_generate=True
    )
    assert isinstance(getattr(out, CACHE_NAME), StaticCache)
    assert torch.equal(out.sequences, expected)
    cache = StaticCache(config=model.config, max_cache_len=model.config.block_size)
    assert torch.equal(model.generate(prompt, max_new_tokens=20, do_sample=False, **{CACHE_NAME: cache}), expected)


def test_sampling_is_seeded_and_cache_independent(model, prompt):
    runs = []
    for use_cache in (True, True, False):
        torch.manual_seed(123)
        runs.append(
            model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=50, temperature=0.9, use_cache=use_cache)
        )
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], model.generate(prompt, max_new_tokens=20, do_sample=False))
    torch.manual_seed(0)
    top1 = model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=1)
    assert torch.equal(top1, model.generate(prompt, max_new_tokens=20, do_sample=False))


def test_beam_search(model, prompt):
    out = model.generate(prompt, max_new_tokens=12, num_beams=4, num_return_sequences=2, do_sample=False)
    assert out.shape == (4, 18)
    assert torch.equal(
        out,
        model.generate(
            prompt, max_new_tokens=12, num_beams=4, num_return_sequences=2, do_sample=False, use_cache=False
        ),
    )
    eager = tiny_model(seed=5, attn_implementation="eager")
    assert torch.equal(
        out, eager.generate(prompt, max_new_tokens=12, num_beams=4, num_return_sequences=2, do_sample=False)
    )

    # the best beam scores at least as high as the greedy path
    def score(seqs):
        with torch.no_grad():
            logp = model(seqs).logits.log_softmax(-1)[:, 5:-1]
        return logp.gather(-1, seqs[:, 6:, None]).sum((1, 2))

    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.all(score(out[::2]) >= score(greedy) - 1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_gives_each_rows_tokens(attn):
    model = tiny_model(seed=7, attn_implementation=attn)
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(1, 96, (n,), generator=g) for n in (3, 9, 6)]
    width, pad = max(len(p) for p in prompts), 0
    ids = torch.stack([torch.cat([torch.full((width - len(p),), pad), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=pad)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=15, do_sample=False, pad_token_id=pad)
        assert batch[row, width:].tolist() == alone[0, len(p) :].tolist()


def requests_in_order(outputs: dict) -> list:
    """generate_batch's outputs (request id -> GenerationOutput) in the order the prompts were given."""
    return [outputs[rid].generated_tokens for rid in sorted(outputs, key=lambda rid: int(rid.rsplit("_", 1)[1]))]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_continuous_batching_gives_each_prompts_greedy_tokens(attn):
    """generate_batch (paged KV cache, all requests packed into one row) against generate() on each prompt alone."""
    model = tiny_model(seed=23, initializer_range=0.5, attn_implementation=attn)
    g = torch.Generator().manual_seed(24)
    prompts = [torch.randint(1, 96, (n,), generator=g).tolist() for n in (3, 14, 1, 9, 5)]
    config = GenerationConfig(max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=-1)
    batched = requests_in_order(model.generate_batch(prompts, generation_config=config))
    for prompt, tokens in zip(prompts, batched):
        alone = model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt) :].tolist()
        assert tokens == alone
    assert model.config._attn_implementation == attn  # generate_batch switched it for its run and back


def test_continuous_batching_sampling_is_seeded():
    model = tiny_model(seed=23, initializer_range=0.5)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    config = GenerationConfig(max_new_tokens=24, do_sample=True, top_k=50, temperature=1.5, eos_token_id=-1)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(requests_in_order(model.generate_batch(prompts, generation_config=config)))
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(len(tokens) == 24 for tokens in runs[0])


def test_generation_config_fits_block_size_and_suppresses_padded_vocab(gpt2_tok):
    model = tiny_model(vocab_size=50304, block_size=64)
    gen = generation_config_for(model, gpt2_tok)
    # a total length, so that a caller's max_length or max_new_tokens is not overridden
    assert gen.max_length == model.config.block_size and gen.max_new_tokens is None
    assert gen.eos_token_id == gen.pad_token_id == 50256
    assert gen.suppress_tokens == list(range(50257, 50304))


def test_padded_vocab_ids_are_never_generated(gpt2_tok):
    model = tiny_model(seed=9, vocab_size=50304, block_size=64)
    with torch.no_grad():  # make the padding rows dominate the (tied) output layer
        model.transformer.wte.weight[50257:] *= 300
    prompt = torch.tensor([gpt2_tok("Hello world").input_ids])
    free = model.generate(prompt, max_new_tokens=20, do_sample=False)
    assert (free[0, 2:] >= 50257).any()  # without suppression the model does emit them
    model.generation_config = generation_config_for(model, gpt2_tok)
    out = model.generate(prompt, max_new_tokens=20, do_sample=False)
    assert (out < 50257).all()
    assert "" not in [gpt2_tok.decode([t]) for t in out[0, 2:].tolist()]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, gpt2_tok):
    model = tiny_model(seed=10, vocab_size=50304, block_size=64, n_embd=48, n_head=4)
    return save_model_folder(model, tmp_path_factory.mktemp("pipe") / "model", gpt2_tok)


def test_pipeline_text_generation(gpt2_folder, gpt2_tok):
    pipe = pipeline("text-generation", model=str(gpt2_folder))
    assert type(pipe.model).__name__ == "NanoGPTForCausalLM"
    # default max_new_tokens comes from generation_config.json and fits block_size (the pipeline's own is 256)
    out = pipe("Hello world", do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("Hello world") and len(text) > len("Hello world")
    ids = gpt2_tok(text).input_ids
    assert 2 < len(ids) <= 64
    # the pipeline's greedy text equals model.generate's
    model = AutoModelForCausalLM.from_pretrained(gpt2_folder)
    ref = model.generate(torch.tensor([[15496, 995]]), do_sample=False)
    assert text == gpt2_tok.decode(ref[0], skip_special_tokens=True)


def test_pipeline_batched_with_padding(gpt2_folder):
    pipe = pipeline("text-generation", model=str(gpt2_folder))
    prompts = ["Hello", "The quick brown fox jumps over", "To be"]
    batched = pipe(prompts, batch_size=3, max_new_tokens=8, do_sample=False)
    for prompt, result in zip(prompts, batched):
        alone = pipe(prompt, max_new_tokens=8, do_sample=False)
        assert result[0]["generated_text"] == alone[0]["generated_text"]


def test_callers_lengths_win_and_prompts_get_the_room_left(gpt2_folder, gpt2_tok):
    """lm-evaluation-harness passes max_length (context + max_gen_toks); others pass max_new_tokens; with
    neither, a prompt of any length up to block_size gets what is left of the context."""
    model = AutoModelForCausalLM.from_pretrained(gpt2_folder)
    ids = torch.tensor([gpt2_tok("Hello world").input_ids])
    assert model.generate(ids, max_length=12, do_sample=False).shape[1] == 12
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == 7
    assert model.generate(ids, do_sample=False).shape[1] == 64
    long = torch.randint(0, 50257, (1, 50), generator=torch.Generator().manual_seed(25))  # over half the block
    assert model.generate(long, do_sample=False).shape[1] == 64


def test_pipeline_with_a_prompt_over_half_the_block(gpt2_folder, gpt2_tok):
    pipe = pipeline("text-generation", model=str(gpt2_folder))
    prompt = " ".join(["hello"] * 40)  # 40 of the 64 tokens
    assert pipe(prompt, do_sample=False)[0]["generated_text"].startswith(prompt)
    assert len(pipe(prompt, do_sample=False, return_tensors=True)[0]["generated_token_ids"]) == 64
    assert pipe.tokenizer.model_max_length == 64
