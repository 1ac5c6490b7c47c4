"""torch.compile(fullgraph=True) of a decode step and of a training step (CPU inductor)."""

import pytest
import torch
from transformers import StaticCache

from helpers import tiny_model

pytestmark = pytest.mark.slow


def test_compiled_decode_step_with_static_cache():
    torch._dynamo.reset()
    model = tiny_model(seed=14)
    prompt = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(15))
    expected = model.generate(prompt, max_new_tokens=12, do_sample=False)

    cache = StaticCache(config=model.config, max_cache_len=model.config.block_size)
    decode = torch.compile(model.forward, fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = model(prompt, past_key_values=cache, use_cache=True)  # prefill stays eager
        token = out.logits[:, -1:].argmax(-1)
        tokens = [token]
        for step in range(11):
            position = torch.full((2, 1), prompt.shape[1] + step)
            out = decode(token, past_key_values=cache, position_ids=position, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
    assert torch.equal(torch.cat([prompt, *tokens], dim=1), expected)


def test_generate_with_compiled_static_cache():
    torch._dynamo.reset()
    model = tiny_model(seed=16)
    prompt = torch.randint(0, 96, (1, 4))
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    model.forward = torch.compile(model.forward, fullgraph=True)
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(out, expected)


def test_compiled_training_step_matches_eager():
    torch._dynamo.reset()
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(17))
    results = []
    for compiled in (False, True):
        model = tiny_model(seed=18).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(x):
            return model(x, labels=x).loss

        fn = torch.compile(step, fullgraph=True) if compiled else step
        losses = []
        for _ in range(3):
            loss = fn(ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        results.append((losses, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-4)
    for name in eager_params:
        assert torch.allclose(eager_params[name], compiled_params[name], atol=1e-4), name
