"""Shared test helpers. Everything a test reads lives under tests/fixtures (never ../shared)."""

import json
from pathlib import Path

import pytest
import torch

import hf_nanogpt  # noqa: F401  (registers the Auto classes)
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.tokenization import gpt2_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
NANOGPT_FIXTURES = FIXTURES / "nanogpt"


def tiny_config(**overrides) -> NanoGPTConfig:
    kwargs = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, bias=True, dropout=0.0)
    kwargs.update(overrides)
    return NanoGPTConfig(**kwargs)


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> NanoGPTForCausalLM:
    torch.manual_seed(seed)
    model = NanoGPTForCausalLM(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def load_nanogpt_fixture(name: str) -> dict:
    """A fixture folder: ckpt (nanoGPT's ckpt.pt contents), inputs, refs and greedy.json."""
    folder = NANOGPT_FIXTURES / name
    return {
        "ckpt": torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=True),
        "inputs": torch.load(folder / "ref_input.pt", map_location="cpu", weights_only=True),
        "refs": torch.load(folder / "ref_logits.pt", map_location="cpu", weights_only=True),
        "greedy": json.loads((folder / "greedy.json").read_text()),
    }


def model_from_nanogpt(ckpt: dict, attn_implementation: str = "sdpa") -> NanoGPTForCausalLM:
    """nanoGPT's model_args -> our config; the state dict loads with no renaming."""
    model = NanoGPTForCausalLM(NanoGPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"], strict=True)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


@pytest.fixture(scope="session")
def gpt2_tok():
    return gpt2_tokenizer()
