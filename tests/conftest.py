"""Pytest fixtures and hooks, and the test session's isolation from the real Hub. The helpers the test
files share live in tests/helpers.py.

Every test talks to a local Hub (tests/hub_server.py) on 127.0.0.1, never to huggingface.co, and never
sees the developer's token or cache. The environment is set here, before anything imports
huggingface_hub, because huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME and the token
into module constants at first import. HF_ENDPOINT names a port reserved here; the server itself starts
only when a test first requests the `hub` fixture (so `pytest tests/test_model.py` starts none). Until
then nothing listens there: a Hub request is refused, and it never goes anywhere else.
"""

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

assert "huggingface_hub" not in sys.modules, "huggingface_hub was imported before the test Hub was configured"
from hub_server import HubServer  # noqa: E402  (stdlib only)

_HUB_TMP = tempfile.mkdtemp(prefix="hf_nanogpt-tests-")
# the Hub's port, held (bound, not listening: connections are refused) until the `hub` fixture starts it
_HUB_PORT_HOLDER = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# SO_REUSEADDR as the server's: a copy of this socket in a forked process cannot keep the server from binding it
_HUB_PORT_HOLDER.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
_HUB_PORT_HOLDER.bind(("127.0.0.1", 0))
HUB_URL = "http://127.0.0.1:%d" % _HUB_PORT_HOLDER.getsockname()[1]
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE",
             "HF_HUB_CACHE", "HF_XET_CACHE"):
    os.environ.pop(name, None)
os.environ.update(
    HF_ENDPOINT=HUB_URL,
    HF_HUB_DISABLE_XET="1",  # the test Hub has no Xet storage: uploads go through LFS
    HF_HOME=os.path.join(_HUB_TMP, "hf_home"),
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)

import pytest  # noqa: E402

from helpers import FIXTURES, HUB_TOKENS, NANOGPT_FIXTURES  # noqa: E402  (imports huggingface_hub: after the environment above)
from hf_nanogpt.data.writing import prepare  # noqa: E402
from hf_nanogpt.tokenization import gpt2_tokenizer  # noqa: E402

_hub_server: HubServer | None = None  # once the `hub` fixture has started it
# tests/test_isolation.py: a file this session appends, before each test, whether the Hub is listening
_HUB_REPORT = os.environ.get("HF_NANOGPT_TESTS_HUB_REPORT")


@pytest.fixture(scope="session")
def gpt2_tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def hub() -> HubServer:
    """The local Hub every Hugging Face client in this test session talks to (HF_ENDPOINT), started by
    the first test that requests it and stopped at the end of the session. A test that talks to the
    Hub requests it (directly or through another fixture)."""
    global _hub_server
    port = _HUB_PORT_HOLDER.getsockname()[1]
    _HUB_PORT_HOLDER.close()
    _hub_server = HubServer(root=os.path.join(_HUB_TMP, "store"), tokens=HUB_TOKENS, port=port).start()
    assert _hub_server.url == HUB_URL
    yield _hub_server
    _hub_server.stop()
    _hub_server = None


@pytest.fixture(scope="module")
def char_data(tmp_path_factory) -> Path:
    """100,000 characters of Shakespeare, prepared with nanoGPT's shakespeare_char vocabulary."""
    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    prepare(
        FIXTURES / "shakespeare_char" / "input_head.txt",
        out,
        tokenizer=str(NANOGPT_FIXTURES / "A_char_nobias" / "meta.pkl"),
    )
    return out


def _hub_listening() -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(HUB_URL.rsplit(":", 1)[1])), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that does not request `hub` sends it nothing, even when an earlier test has started it
    (run on its own, such a test would find no Hub)."""
    if _HUB_REPORT:
        with open(_HUB_REPORT, "a") as report:
            report.write(f"{item.nodeid}\t{'hub listening' if _hub_listening() else 'no hub'}\n")
    server = _hub_server if "hub" not in item.fixturenames else None
    mark = len(server.request_log) if server else 0
    result = yield
    if server and len(server.request_log) > mark:
        pytest.fail(
            f"{item.nodeid} sent the local Hub {server.request_log[mark:][:5]} without requesting the `hub` fixture"
        )
    return result


def pytest_unconfigure(config):
    _HUB_PORT_HOLDER.close()
    shutil.rmtree(_HUB_TMP, ignore_errors=True)
