"""Helpers the test files share: `from helpers import tiny_model, ...` (tests/ is on sys.path under pytest).

Imported only once tests/conftest.py has pointed every Hugging Face client at the local test Hub
(it imports huggingface_hub, through transformers); the tokens below are the ones that Hub knows.
"""

import json
import secrets
import textwrap
from pathlib import Path

import torch

import hf_nanogpt  # noqa: F401  (registers the Auto classes)
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM

# tokens of the local Hub (the `hub` fixture, tests/hub_server.py); random so that a test can grep
# outputs and files for them
WRITE_TOKEN = "hf_" + secrets.token_hex(17)  # alice, write access
READ_TOKEN = "hf_" + secrets.token_hex(17)  # alice, read-only
OTHER_TOKEN = "hf_" + secrets.token_hex(17)  # bob, write access to his own namespace only
README_TOKEN = "hf_" + secrets.token_hex(17)  # your-name, as the README's examples write it (tests/test_readme.py)
HUB_TOKENS = {WRITE_TOKEN: "alice", READ_TOKEN: {"name": "alice", "role": "read"}, OTHER_TOKEN: "bob", README_TOKEN: "your-name"}

FIXTURES = Path(__file__).parent / "fixtures"
NANOGPT_FIXTURES = FIXTURES / "nanogpt"

# The start of a script run in a subprocess that must load models without this package, as someone
# who never installed it would: importing hf_nanogpt fails there.
BLOCK_HF_NANOGPT = textwrap.dedent(
    """
    import importlib.abc, sys
    class NoHfNanogpt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_nanogpt" or name.startswith("hf_nanogpt."):
                raise ImportError("hf_nanogpt is blocked in this process")
    sys.meta_path.insert(0, NoHfNanogpt())
    try:
        import hf_nanogpt
        raise SystemExit("hf_nanogpt should not be importable here")
    except ImportError:
        pass
    """
)


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
