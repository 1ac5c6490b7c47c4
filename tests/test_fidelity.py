"""Fidelity to nanoGPT: real nanoGPT checkpoints reproduce what nanoGPT itself computed from them.

Fixture A: char level, bias=False, 2x4x64. Fixture B: GPT-2 BPE with vocab padded to 50304, bias=True.
Logits and loss were computed by nanoGPT's GPT class (torch 2.13 CPU, float32); see fixtures/nanogpt/README.md.
"""

import pytest
import torch

from helpers import load_nanogpt_fixture, model_from_nanogpt
from hf_nanogpt.modeling_nanogpt import CACHE_NAME

FIXTURES = ["A_char_nobias", "B_bpe_bias"]


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    return load_nanogpt_fixture(request.param)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_nanogpt(fixture, attn):
    model = model_from_nanogpt(fixture["ckpt"], attn)
    inputs, refs = fixture["inputs"], fixture["refs"]
    with torch.no_grad():
        logits = model(inputs["input_ids"]).logits
        short = model(inputs["input_ids_short"]).logits
    if "logits" in refs:  # fixture A: every position
        assert (logits - refs["logits"]).abs().max() <= 1e-5
    else:  # fixture B keeps full-vocabulary logits at a few positions only
        assert (logits[:, refs["positions"]] - refs["logits_at_positions"]).abs().max() <= 1e-5
    assert (logits[:, -1:] - refs["logits_last"]).abs().max() <= 1e-5
    assert (short - refs["logits_short"]).abs().max() <= 1e-5


def test_loss_matches_nanogpt(fixture):
    """nanoGPT's targets come pre-shifted from its data loader: they go in `shift_labels`."""
    model = model_from_nanogpt(fixture["ckpt"])
    inputs = fixture["inputs"]
    with torch.no_grad():
        loss = model(inputs["loss_input_ids"], shift_labels=inputs["loss_targets"]).loss
    assert abs(loss.item() - fixture["refs"]["loss"].item()) <= 1e-5


def test_labels_loss_matches_nanogpt_on_the_same_pairs(fixture):
    """With HF-style labels (shifted inside the model), the loss covers the same (input, target) pairs."""
    model = model_from_nanogpt(fixture["ckpt"])
    x, y = fixture["inputs"]["loss_input_ids"], fixture["inputs"]["loss_targets"]
    with torch.no_grad():
        nanogpt_style = model(x, shift_labels=y).loss  # T pairs
        # the same T-1 first pairs, HF style: labels = inputs, last target dropped
        hf_style = model(x, labels=x).loss
        manual = torch.nn.functional.cross_entropy(model(x).logits[0, :-1], y[0, :-1])
    assert torch.allclose(hf_style, manual, atol=1e-6)
    assert nanogpt_style.item() != hf_style.item()  # one pair apart, so not the same number


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_tokens_match_nanogpt(fixture, attn):
    model = model_from_nanogpt(fixture["ckpt"], attn)
    greedy = fixture["greedy"]
    prompt = torch.tensor([greedy["prompt_ids"]])
    out = model.generate(
        prompt, max_new_tokens=greedy["max_new_tokens"], do_sample=False, attention_mask=torch.ones_like(prompt)
    )
    assert out[0, prompt.shape[1] :].tolist() == greedy["new_ids"]


def test_eager_sdpa_and_cache_agree_on_real_weights(fixture):
    eager = model_from_nanogpt(fixture["ckpt"], "eager")
    sdpa = model_from_nanogpt(fixture["ckpt"], "sdpa")
    ids = fixture["inputs"]["input_ids"]
    with torch.no_grad():
        a, b = eager(ids).logits, sdpa(ids).logits
        out = sdpa(ids[:, :40], use_cache=True)
        steps = [out.logits]
        for t in range(40, ids.shape[1]):
            out = sdpa(ids[:, t : t + 1], cache=getattr(out, CACHE_NAME), use_cache=True)
            steps.append(out.logits)
    assert (a - b).abs().max() <= 1e-5
    assert (torch.cat(steps, 1) - b).abs().max() <= 1e-5
