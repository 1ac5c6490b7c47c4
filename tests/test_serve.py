"""`hf-nanogpt serve` end to end: a server process on 127.0.0.1, the `openai` client (and raw HTTP for malformed
requests). Each server is started once per configuration and always stopped by its process id."""

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cli.serving import utils as serving_utils

from helpers import HELLO, TWO, chat_model, free_port, tiny_model
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

openai = pytest.importorskip("openai", reason="hf-nanogpt[serve] (and the openai client in [dev]) not installed")
pytest.importorskip("fastapi", reason="hf-nanogpt[serve] not installed")

ROOT = Path(__file__).resolve().parents[1]
BLOCK_SIZE = 64
MAX_BODY_BYTES = 4096
PROMPTS = ["Hello world", "The quick brown fox", "ROMEO:", "To be, or not", "1 2 3 4", "A", "Once upon a time there",
           "import numpy as np"]


class Server:
    """`hf-nanogpt serve FOLDER` in a subprocess, its output in a file."""

    def __init__(self, folder: Path, *flags: str, port: int | None = None):
        self.folder, self.port = str(folder), port or free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log")
        command = [sys.executable, "-m", "hf_nanogpt.cli", "serve", self.folder, "--port", str(self.port), *flags]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 240) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"no /health within {timeout} s:\n{self.output()}")

    def client(self):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", timeout=120, max_retries=0)

    def stop(self) -> int:
        """SIGINT (Ctrl-C), then a kill if it does not stop in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:
            self.final_output = self.output()
            self.log.close()
        return self.process.returncode


def post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    # GPT-2's BPE on nanoGPT's padded vocabulary (the padding rows are suppressed by the generation config)
    model = tiny_model(seed=1, vocab_size=50304, block_size=BLOCK_SIZE, initializer_range=0.5)
    base = save_model_folder(model, root / "base", gpt2_tokenizer())
    chat, tokenizer = chat_model()
    # a folder only its own code loads: a model type neither transformers nor hf_nanogpt knows, and an auto_map
    remote = save_model_folder(tiny_model(seed=2, vocab_size=50304), root / "remote", gpt2_tokenizer())
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "nanogpt_of_its_own"}))
    return {"base": base, "chat": save_model_folder(chat, root / "chat", tokenizer), "remote": remote}


@functools.cache
def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def generate_text(folder: Path, prompt_ids: list[int], max_new_tokens: int) -> str:
    """The package's own greedy generate() on the folder, decoded as the server decodes."""
    model, tokenizer = load(folder)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def batching(folders):
    server = Server(folders["base"], "--max-body-bytes", str(MAX_BODY_BYTES))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def one_at_a_time(folders):
    server = Server(folders["base"], "--no-continuous-batching")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chat_server(folders):
    server = Server(folders["chat"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def complete(client, model: str, prompt: str, max_tokens: int = 12) -> str:
    response = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return response.choices[0].text


@pytest.mark.parametrize("server_name", ["batching", "one_at_a_time"])
def test_completions_equal_generate_streamed_or_not_and_alone_or_eight_at_once(server_name, folders, request):
    server = request.getfixturevalue(server_name)
    client, model = server.client(), server.folder
    tokenizer = AutoTokenizer.from_pretrained(folders["base"])
    alone = [complete(client, model, prompt) for prompt in PROMPTS]
    expected = [generate_text(folders["base"], tokenizer(prompt)["input_ids"], 12) for prompt in PROMPTS]
    assert alone == expected

    chunks = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    pieces = [chunk.choices[0].text for chunk in chunks]
    assert len([p for p in pieces if p]) > 1  # token by token, not one block at the end
    assert "".join(pieces) == alone[0]

    if server_name == "one_at_a_time":  # each request with its own sampling settings, on every release
        sampled = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=4, temperature=0.9, seed=1)
        assert sampled.usage.completion_tokens == 4
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda prompt: complete(client, model, prompt), PROMPTS))
    assert together == alone


def test_chat_completions_equal_generate_on_the_templated_prompt(chat_server, folders):
    client, tokenizer = chat_server.client(), AutoTokenizer.from_pretrained(folders["chat"])
    for conversation in ([HELLO[0]], HELLO + [TWO[0]]):
        response = client.chat.completions.create(model=chat_server.folder, messages=conversation, temperature=0)
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)
        room = BLOCK_SIZE - len(prompt["input_ids"])
        assert response.choices[0].message.content == generate_text(folders["chat"], prompt["input_ids"], room)
        assert response.choices[0].finish_reason == "stop"  # at <|im_end|>, as generate() stops
    assert response.choices[0].message.content == TWO[1]["content"]  # what the chat model learnt

    stream = client.chat.completions.create(
        model=chat_server.folder, messages=[HELLO[0]], temperature=0, stream=True, max_completion_tokens=3
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    response = client.chat.completions.create(
        model=chat_server.folder, messages=[HELLO[0]], temperature=0, max_completion_tokens=3
    )
    assert streamed == response.choices[0].message.content and response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_models_and_health_name_the_model_as_given(batching):
    assert batching.process.poll() is None, batching.output()
    with urllib.request.urlopen(f"{batching.url}/health", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ok"
    assert [model.id for model in batching.client().models.list()] == [batching.folder]


def test_bad_requests_get_a_4xx_that_says_why_and_the_server_goes_on(batching):
    url, model, client = f"{batching.url}/v1/completions", batching.folder, batching.client()
    cases = [  # (body, status, words of the message)
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object, found a list"),
        (json.dumps({"model": model}).encode(), 400, "no `prompt`"),
        (json.dumps({"model": model, "prompt": 5}).encode(), 400, "`prompt` must be a string, found an integer"),
        (json.dumps({"model": model, "prompt": "x", "max_tokens": "9"}).encode(), 400, "`max_tokens` must be an"),
        (json.dumps({"model": model, "prompt": "x", "max_tokens": 0}).encode(), 400, "at least 1, found 0"),
        (json.dumps({"model": model, "prompt": "x", "max_tokens": 10**9}).encode(), 400, "leaves room for 63"),
        (json.dumps({"model": model, "prompt": "x" * (MAX_BODY_BYTES + 1)}).encode(), 413, "--max-body-bytes"),
        (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, f"serves '{model}'"),
        (json.dumps({"model": model, "prompt": " the" * BLOCK_SIZE}).encode(), 400, "block_size is 64"),
    ]
    for body, status, words in cases:
        got, answer = post(url, body)
        assert (got, words in answer["error"]["message"]) == (status, True), (body[:80], answer)
        assert complete(client, model, "Hello world", 2)  # still serving

    got, answer = post(f"{batching.url}/v1/chat/completions", json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert got == 400 and "no chat template" in answer["error"]["message"] and "/v1/completions" in str(answer)
    assert post(f"{batching.url}/reset", b"{}")[0] == 404  # transformers' other endpoints are not served

    # up to 5.24 continuous batching keeps the first request's sampling settings (greedy here) for all
    sampled = dict(model=model, prompt="Hello", max_tokens=4, temperature=0.9, seed=1)
    if hasattr(getattr(serving_utils, "CBGenerateManager", None), "init_cb"):
        with pytest.raises(openai.BadRequestError, match="as its first request asked.*--no-continuous-batching"):
            client.completions.create(**sampled)
    else:
        assert client.completions.create(**sampled).usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="other", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="block_size"):
        client.completions.create(model=model, prompt="x", max_tokens=BLOCK_SIZE)
    assert complete(client, model, "Hello world", 2)


def test_chat_messages_past_block_size_and_malformed_messages_get_a_400(chat_server):
    client, model = chat_server.client(), chat_server.folder
    with pytest.raises(openai.BadRequestError, match="chat-templated messages are .* block_size is 64"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello " * 80}])
    with pytest.raises(openai.BadRequestError, match="messages\\[0\\] must be an object"):
        client.chat.completions.create(model=model, messages=[{"content": "hello"}])
    response = client.chat.completions.create(model=model, messages=[HELLO[0]], temperature=0)
    assert response.choices[0].message.content == HELLO[1]["content"]


def test_a_port_in_use_a_missing_model_and_remote_code_without_the_flag_exit_2(batching, folders, tmp_path):
    runs = [
        ([folders["base"], "--port", str(batching.port)], "cannot listen"),
        ([tmp_path / "nope", "--port", str(free_port())], "nope"),
        ([folders["remote"], "--port", str(free_port())], "pass --trust-remote-code"),
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "hf_nanogpt.cli", "serve", *map(str, args)], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        for args, _ in runs
    ]
    try:
        for process, (_, words) in zip(processes, runs):
            output = process.communicate(timeout=240)[0]
            assert process.returncode == 2 and words in output and "Traceback" not in output, output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_with_trust_remote_code_a_folder_only_its_own_code_loads_is_served(folders):
    server = Server(folders["remote"], "--trust-remote-code")
    try:
        server.wait_ready()
        prompt, tokenizer = "Hello world", AutoTokenizer.from_pretrained(folders["remote"])
        ids = tokenizer(prompt)["input_ids"]
        model = AutoModelForCausalLM.from_pretrained(folders["remote"], trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules")  # the folder's code, not this package's
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        expected = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        assert complete(server.client(), server.folder, prompt, 8) == expected
    finally:
        assert server.stop() == 0


def test_without_the_serve_extra_the_error_says_what_to_install():
    block = (
        "import importlib.abc, sys\n"
        "class NoFastAPI(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'fastapi':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoFastAPI())\n"
        "from hf_nanogpt.cli import main\n"
        "sys.exit(main(['serve', 'some-model']))\n"
    )
    result = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2 and "pip install 'hf-nanogpt[serve]'" in result.stderr, result.stderr


def test_ctrl_c_stops_the_server_cleanly(batching):
    """Last in the file: it stops the module's continuous batching server (after a request started its worker)."""
    assert complete(batching.client(), batching.folder, "Hello world", 2)
    assert batching.stop() == 0
    assert "Traceback" not in batching.final_output and "Finished server process" in batching.final_output


def test_a_prompt_with_characters_a_char_vocabulary_lacks_is_a_400_naming_them():
    from hf_nanogpt.serving import RequestChecks, RequestError
    from hf_nanogpt.tokenization import char_tokenizer

    checks = RequestChecks(None, "m", char_tokenizer("abc \n"), block_size=16, max_body_bytes=1 << 10)
    with pytest.raises(RequestError) as err:
        checks.prompt_tokens("abz")
    assert err.value.status == 400 and "'z'" in err.value.message
    assert checks.prompt_tokens("ab c") == 4
