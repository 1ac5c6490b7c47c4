"""vLLM serves a folder written by save_model_folder through its Transformers backend, with no change.

The folder's own part runs everywhere: generation_config's suppress_tokens also land in SUPPRESS_BIAS_FILE as a
logit bias, which vLLM adds (it honours no suppress_tokens), while transformers never reads that file.

Opt-in tests (skipped otherwise):
    VLLM_PYTHON=path/to/bin/python     a Python with vllm installed (docs/serving.md, "vLLM"): vLLM runs there, in a
                                       subprocess, as LLM(...) (also with tensor_parallel_size=2 where two CPUs are
                                       free) and as the OpenAI-compatible server on 127.0.0.1; greedy tokens equal
                                       our generate()'s, and no padded id is ever sampled
"""

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GenerationConfig

from helpers import free_port
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.saving import SUPPRESS_BIAS_FILE, save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

PROMPTS = ["Hello world, this is", "The quick brown fox"]
NEW_TOKENS = 16
REAL_VOCAB = 50257  # GPT-2's tokenizer; the model has nanoGPT's 50304 rows


def padded_rows_win_model() -> NanoGPTForCausalLM:
    """nanoGPT's 50304 rows with head size 32 (vLLM's CPU attention takes no less), weights drawn wider than at
    init (std 0.1) so that greedy choices are clear-cut, and the padded rows made to win: with ln_f's bias at 1
    and those rows all ones, each padded id scores about n_embd, far above every real id. Only the suppression
    keeps them out: transformers' suppress_tokens, vLLM's bias file."""
    torch.manual_seed(0)
    config = NanoGPTConfig(vocab_size=50304, block_size=128, n_layer=2, n_head=4, n_embd=128, initializer_range=0.1)
    model = NanoGPTForCausalLM(config).eval()
    with torch.no_grad():
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[REAL_VOCAB:] = 1.0
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(folder, our greedy new tokens per prompt)."""
    model, tokenizer = padded_rows_win_model(), gpt2_tokenizer()
    folder = save_model_folder(model, tmp_path_factory.mktemp("vllm") / "model", tokenizer)
    ours = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            assert model(ids).logits[0, -1].argmax() >= REAL_VOCAB  # a padded id would win unsuppressed
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        ours.append(out[0, ids.shape[1]:].tolist())
    return folder, ours


def test_folder_carries_suppress_tokens_as_a_logit_bias_that_transformers_never_reads(served):
    folder, ours = served
    bias = load_file(folder / SUPPRESS_BIAS_FILE)
    assert list(bias) == ["lm_head.bias"]
    suppress = GenerationConfig.from_pretrained(folder).suppress_tokens
    assert suppress == list(range(REAL_VOCAB, 50304))
    assert torch.isneginf(bias["lm_head.bias"]).nonzero().flatten().tolist() == suppress
    assert bias["lm_head.bias"][:REAL_VOCAB].eq(0).all()
    # the weights stay nanoGPT's: model.safetensors and the loaded state dict hold no bias, and nothing is unexpected
    assert "lm_head.bias" not in load_file(folder / "model.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    assert not any(info.values()), info
    assert "lm_head.bias" not in model.state_dict()
    assert model.generation_config.suppress_tokens == suppress


def test_no_bias_file_without_suppressed_tokens(tmp_path):
    torch.manual_seed(0)
    model = NanoGPTForCausalLM(NanoGPTConfig(vocab_size=REAL_VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=64))
    folder = save_model_folder(model, tmp_path / "m", gpt2_tokenizer())
    assert not (folder / SUPPRESS_BIAS_FILE).exists()


# -- opt-in: vLLM itself ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("VLLM_PYTHON")
    if not python:
        pytest.skip("set VLLM_PYTHON to a Python with vllm installed (docs/serving.md) to run vLLM")
    check = subprocess.run([python, "-c", "import vllm"], capture_output=True, timeout=300)
    if check.returncode != 0:
        pytest.fail(f"VLLM_PYTHON={python} cannot import vllm: {check.stderr.decode(errors='replace')[-2000:]}")
    return python


def vllm_env(**extra: str) -> dict:
    # a small KV cache (GiB) instead of vLLM's default share of memory; the folder is local: no Hub
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **extra}


# run by VLLM_PYTHON: vLLM's engine starts its workers with spawn, so the work sits under a __main__ guard
LLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams

def main():
    args = json.loads(sys.argv[1])
    llm = LLM(model=args["folder"], trust_remote_code=True, dtype="float32", max_model_len=128,
              tensor_parallel_size=args["tp"], enforce_eager=True)
    greedy = llm.generate(args["prompts"], SamplingParams(temperature=0, max_tokens=args["new_tokens"]))
    # temperature 1 sampling, then the defaults a user gets (vLLM takes them from generation_config.json)
    sampled = llm.generate(args["prompts"] * 4, SamplingParams(temperature=1.0, max_tokens=32, seed=0))
    default = llm.generate(args["prompts"] * 4)
    tokens = lambda outputs: [list(o.outputs[0].token_ids) for o in outputs]
    print("RESULT " + json.dumps({"greedy": tokens(greedy), "sampled": tokens(sampled), "default": tokens(default)}))

if __name__ == "__main__":
    main()
"""


def free_cpus(count: int) -> list[int] | None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return cpus[:count] if len(cpus) >= count else None


@pytest.mark.parametrize("tp", [1, 2])
def test_vllm_llm_greedy_tokens_equal_ours_and_no_padded_id_is_sampled(vllm_python, served, tmp_path, tp):
    folder, ours = served
    env = vllm_env()
    if tp > 1:
        cpus = free_cpus(tp)
        if cpus is None:
            pytest.skip(f"tensor_parallel_size={tp} on CPU needs {tp} CPUs, one per worker")
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(map(str, cpus))  # one NUMA node: bind each worker by hand
    script = tmp_path / "run_llm.py"
    script.write_text(LLM_SCRIPT)
    args = {"folder": str(folder), "tp": tp, "prompts": PROMPTS, "new_tokens": NEW_TOKENS}
    result = subprocess.run(
        [vllm_python, str(script), json.dumps(args)], capture_output=True, text=True, timeout=600, env=env
    )
    log = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, log[-5000:]
    got = json.loads(lines[-1].removeprefix("RESULT "))
    assert got["greedy"] == ours
    for kind in ("sampled", "default"):
        emitted = [t for row in got[kind] for t in row]
        assert emitted and max(emitted) < REAL_VOCAB, (kind, sorted(set(emitted))[-5:])
    if tp > 1:  # c_attn's q/k/v split is what vLLM's packed-QKV fuser shards by heads
        assert "Fused: c_attn" in log, log[-5000:]


def post_json(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_vllm_openai_server_greedy_completion_equals_ours_and_no_padded_id_is_sampled(vllm_python, served, tmp_path):
    folder, ours = served
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--trust-remote-code",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "128",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        # a session of its own: the server and the engine processes it starts are stopped together by its pid
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 480
        while True:
            assert server.poll() is None, f"the server exited ({server.returncode}):\n{log_path.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"the server was not up in 480 s:\n{log_path.read_text()[-5000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        for prompt, expected in zip(PROMPTS, ours, strict=True):
            body = {"model": str(folder), "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
                    "return_token_ids": True}  # fmt: skip
            choice = post_json(f"{base}/v1/completions", body, timeout=120)["choices"][0]
            assert choice["token_ids"] == expected
        # the server's defaults (generation_config.json's), and temperature 1
        for extra in ({}, {"temperature": 1.0}):
            body = {"model": str(folder), "prompt": PROMPTS[0], "max_tokens": 32, "n": 4, "return_token_ids": True}
            choices = post_json(f"{base}/v1/completions", {**body, **extra}, timeout=120)["choices"]
            emitted = [t for choice in choices for t in choice["token_ids"]]
            assert emitted and max(emitted) < REAL_VOCAB, (extra, sorted(set(emitted))[-5:])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
