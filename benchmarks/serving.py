"""B5: serving on this CPU: OpenAI-compatible servers on the same weights, 1, 4 and 16 requests at a time.

    python -m benchmarks.serving --model FOLDER [--gguf f32=FILE --gguf q8_0=FILE --llama-cpp BUILD]
                                 [--vllm-python PYTHON] [--concurrency 1 4 16] [--max-tokens 64] [--out FILE]

Every server is started here (127.0.0.1, a free port), warmed up, measured, and stopped by its process id
before the next one starts, so each has the machine alone: `hf-nanogpt serve FOLDER` with continuous batching
and with `--no-continuous-batching`; with --vllm-python, vLLM's OpenAI server (that Python must have vllm);
with --llama-cpp and --gguf, llama.cpp's llama-server on each GGUF file (export them from FOLDER with
`hf-nanogpt export gguf`). The client streams /v1/completions (stdlib http.client, one thread per request in
flight): at concurrency C it keeps C requests in flight until --requests-per-level x C have finished, and
takes requests/s and completion tokens/s over that wall time, and each request's time to its first token.
Every level runs --repeats times (medians). Ratios are taken between servers of this one run.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .common import machine, markdown_table, ratio_cell

# Prompts of different lengths (about 5 to 40 GPT-2 tokens), taken in turn
SENTENCES = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "First Citizen: You are all resolved rather to die than to famish?",
    "All: Resolved. resolved.",
    "First Citizen: First, you know Caius Marcius is chief enemy to the people.",
    "All: We know't, we know't.",
    "First Citizen: Let us kill him, and we'll have corn at our own price. Is't a verdict?",
    "All: No more talking on't; let it be done: away, away!",
]
PROMPTS = [" ".join(SENTENCES[i : i + 1 + i % 3]) for i in range(len(SENTENCES))]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)  # request fields this server needs (e.g. ignore_eos)
    startup_timeout: float = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None, timeout: float = 600.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def wait_ready(port: int, process: subprocess.Popen, timeout: float) -> str:
    """Waits for GET /v1/models to answer 200; returns the model name the server lists first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        try:
            conn, response = request(port, "GET", "/v1/models", timeout=5)
            data = response.read()
            conn.close()
            if response.status == 200:
                return json.loads(data)["data"][0]["id"]
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server did not answer /v1/models within {timeout:.0f} s")


def stream_completion(port: int, body: dict) -> tuple[float, float, int]:
    """One streamed /v1/completions request: (seconds to the first text, seconds in all, completion tokens)."""
    start = time.perf_counter()
    conn, response = request(port, "POST", "/v1/completions", {**body, "stream": True})
    if response.status != 200:
        raise RuntimeError(f"/v1/completions answered {response.status}: {response.read()[:500]!r}")
    first, chunks, usage = None, 0, None
    while line := response.readline():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        event = json.loads(payload)
        if event.get("usage"):
            usage = event["usage"].get("completion_tokens")
        for choice in event.get("choices") or []:
            if choice.get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
    conn.close()
    total = time.perf_counter() - start
    return (first if first is not None else total), total, usage if usage else chunks


def load(port: int, model: str, concurrency: int, count: int, max_tokens: int, extra: dict) -> dict:
    """`count` requests, `concurrency` in flight at a time: requests/s, tokens/s and the median time to first token."""
    bodies = [
        {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0, **extra}
        for i in range(count)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda body: stream_completion(port, body), bodies))
    wall = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    return {"requests_per_s": count / wall, "tokens_per_s": tokens / wall,
            "ttft_s": statistics.median(r[0] for r in results), "tokens": tokens, "wall_s": wall}


def measure(server: Server, levels: list[int], per_level: int, max_tokens: int, repeats: int) -> dict[int, dict]:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in server.command]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"b5-{port}.log", "w")
    process = subprocess.Popen(command, env={**os.environ, **server.env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        model = wait_ready(port, process, server.startup_timeout)
        for level in levels:  # warm-up: the first requests at each level compile, allocate, choose kernels
            load(port, model, level, level, max_tokens, server.extra_body)
        out = {}
        for level in levels:
            runs = [load(port, model, level, per_level * level, max_tokens, server.extra_body) for _ in range(repeats)]
            out[level] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(f"{server.name} @ {level}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[level].items()),
                  file=sys.stderr)
        return out
    finally:
        process.send_signal(signal.SIGINT)  # a clean stop (Ctrl-C), then a kill if it does not come
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def servers(args: argparse.Namespace) -> list[Server]:
    model = str(args.model)
    ours = [sys.executable, "-m", "hf_nanogpt.cli", "serve", model, "--host", "127.0.0.1", "--port", "{port}"]
    out = [
        Server("hf-nanogpt serve, continuous batching", ours),
        Server("hf-nanogpt serve, no continuous batching", [*ours, "--no-continuous-batching"]),
    ]
    if args.vllm_python:
        out.append(Server(
            "vLLM CPU",
            [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
             "--port", "{port}", "--trust-remote-code", "--dtype", "float32",
             "--max-model-len", str(args.max_model_len), *args.vllm_arg],
            # its KV cache in GiB, and every core for its threads (its default binding leaves one out on 2 cores)
            env={"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}",
                 "HF_HUB_OFFLINE": "1"},
            extra_body={"ignore_eos": True},
            startup_timeout=900,
        ))
    for spec in args.gguf:
        kind, path = spec.split("=", 1)
        slots = max(args.concurrency)
        out.append(Server(
            f"llama-server {kind}",
            [str(Path(args.llama_cpp) / "bin" / "llama-server"), "-m", path, "--host", "127.0.0.1", "--port", "{port}",
             "-t", str(os.cpu_count()), "-np", str(slots), "-c", str(slots * args.max_model_len), "--cont-batching"],
            extra_body={"ignore_eos": True},
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an hf_nanogpt model folder (the served weights)")
    parser.add_argument("--gguf", action="append", default=[], metavar="KIND=FILE",
                        help="a GGUF export of the same weights for llama-server (needs --llama-cpp); repeatable")
    parser.add_argument("--llama-cpp", help="a llama.cpp build folder (bin/llama-server)")
    parser.add_argument("--vllm-python", help="a Python with vllm installed (vLLM's OpenAI server)")
    parser.add_argument("--vllm-arg", action="append", default=[], help="one more argument for vLLM's server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-level", type=int, default=2, help="requests per level: this x concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=256, help="context per request (vLLM, llama-server)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="run only the servers whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.gguf and not args.llama_cpp:
        parser.error("--gguf needs --llama-cpp (the llama.cpp build folder holding bin/llama-server)")

    chosen = [s for s in servers(args) if not args.only or any(word in s.name for word in args.only)]
    results = {}
    for server in chosen:
        results[server.name] = measure(server, args.concurrency, args.requests_per_level, args.max_tokens,
                                       args.repeats)
    info = machine()
    print(report(results, args, info))
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "max_tokens": args.max_tokens, "results": results}, indent=1))
    return 0


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace, info: dict) -> str:
    rows = []
    for name, levels in results.items():
        for level, r in levels.items():
            rows.append([name, level, f"{r['requests_per_s']:.2f}", f"{r['tokens_per_s']:.1f}",
                         f"{r['ttft_s'] * 1000:.0f}"])
    lines = [
        "; ".join(f"{k}: {v}" for k, v in info.items()) + ".",
        "",
        markdown_table(["server", "concurrent requests", "requests/s", "tokens/s", "time to first token (ms)"], rows),
        "",
    ]
    cb, no_cb = "hf-nanogpt serve, continuous batching", "hf-nanogpt serve, no continuous batching"
    top = max(args.concurrency)

    def tokens(name: str, level: int = top) -> float | None:
        return results.get(name, {}).get(level, {}).get("tokens_per_s")

    if tokens(cb) and tokens(no_cb):
        lines.append(f"- continuous batching / none at {top} requests: {ratio_cell(tokens(cb) / tokens(no_cb))} "
                     f"tokens/s")
    if tokens(cb) and tokens("vLLM CPU"):
        lines.append(f"- hf-nanogpt serve / vLLM CPU at {top} requests: {ratio_cell(tokens(cb) / tokens('vLLM CPU'))}")
    if tokens("llama-server q8_0", 1) and tokens("llama-server f32", 1):
        lines.append(f"- llama-server q8_0 / f32 at 1 request: "
                     f"{ratio_cell(tokens('llama-server q8_0', 1) / tokens('llama-server f32', 1))} tokens/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
