"""Shared test helpers. Everything a test reads lives under tests/fixtures (never ../shared).

A local Hub (tests/hub_server.py) is started here, before anything imports huggingface_hub, because
huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME and the token into module constants at
first import. So every test talks to 127.0.0.1, never to huggingface.co, and never sees the developer's
token or cache.
"""

import os
import secrets
import shutil
import sys
import tempfile

assert "huggingface_hub" not in sys.modules, "huggingface_hub was imported before the test Hub was configured"
from hub_server import HubServer  # noqa: E402  (stdlib only)

# tokens are random so that a test can grep outputs and files for them
WRITE_TOKEN = "hf_" + secrets.token_hex(17)  # alice, write access
READ_TOKEN = "hf_" + secrets.token_hex(17)  # alice, read-only
OTHER_TOKEN = "hf_" + secrets.token_hex(17)  # bob, write access to his own namespace only
README_TOKEN = "hf_" + secrets.token_hex(17)  # your-name, as the README's examples write it (tests/test_readme.py)
HUB_TOKENS = {WRITE_TOKEN: "alice", READ_TOKEN: {"name": "alice", "role": "read"}, OTHER_TOKEN: "bob", README_TOKEN: "your-name"}
_HUB_TMP = tempfile.mkdtemp(prefix="hf_nanogpt-tests-")
HUB = HubServer(root=os.path.join(_HUB_TMP, "store"), tokens=HUB_TOKENS).start()
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_XET_CACHE"):
    os.environ.pop(name, None)
os.environ.update(
    HF_ENDPOINT=HUB.url,
    HF_HUB_DISABLE_XET="1",  # the test Hub has no Xet storage: uploads go through LFS
    HF_HOME=os.path.join(_HUB_TMP, "hf_home"),
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)

import json  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import hf_nanogpt  # noqa: F401  (registers the Auto classes)
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM  # noqa: E402
from hf_nanogpt.tokenization import gpt2_tokenizer  # noqa: E402

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


@pytest.fixture(scope="session")
def gpt2_tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def hub() -> HubServer:
    """The local Hub every Hugging Face client in this test session talks to (HF_ENDPOINT)."""
    return HUB


def pytest_unconfigure(config):
    HUB.stop()
    shutil.rmtree(_HUB_TMP, ignore_errors=True)
