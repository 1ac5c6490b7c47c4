"""B5: `hf-nanogpt prepare` at scale against nanoGPT's openwebtext/prepare.py approach, and the trainer's batch
fetch against a training step (CPU).

    python -m benchmarks.prepare [--sizes 40 160 640] [--num-proc N] [--repeats 1] [--tiktoken PATH] [--tiny]

Corpora: JSON lines of generated documents (runs of 20-400 lines of the Python standard library's source,
seeded), of each size in MB, written under a temporary folder and deleted at the end. Each command runs in
its own process, the sides taking turns at each size; its wall time and its memory are measured from
outside: the peak over 50 ms samples of the summed PSS of its process tree (forked workers share pages,
which RSS would count once per process), and the largest single process's peak RSS.

Sides, all with --num-proc processes and GPT-2 BPE:
- `hf-nanogpt prepare CORPUS OUT --tokenizer gpt2` with the tokenizers library (tiktoken hidden from it),
- the same with tiktoken importable (it then encodes with tiktoken),
- nanoGPT's approach (benchmarks/nanogpt_prepare.py: datasets' load_dataset + map with tiktoken).
tiktoken is no dependency of hf_nanogpt: `--tiktoken PATH` names a folder it is installed in
(`pip install --target PATH tiktoken`), appended to those processes' sys.path; without it (and without
tiktoken installed) the last two sides are left out.

Goals (issue 15): memory flat in corpus size (the largest corpus within 1.25x of the smallest's peak),
time linear in it, throughput at least nanoGPT's at the same process count; and at batch 12 x block 1024
on a shard folder, fetching a batch under 2% of a GPT-2 124M training step.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from hf_nanogpt.data.shards import HEADER_BYTES
from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.demo import stdlib_corpus
from hf_nanogpt.training.devices import auto_dtype

from .common import GPT2_124M, TINY, gpt2_pair, markdown_table, ratio_cell

ROOT = Path(__file__).resolve().parent.parent
# python -c BOOT EXTRA_PATH HIDE_TIKTOKEN MODULE ARGS...: `python -m MODULE ARGS` with EXTRA_PATH on sys.path
# (where tiktoken is installed) or tiktoken hidden (HIDE_TIKTOKEN non-empty: importing it fails)
BOOT = """import importlib.abc, runpy, sys
extra, hide, module = sys.argv[1:4]
if extra:
    sys.path.append(extra)
class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tiktoken":
            raise ImportError("tiktoken is hidden in this benchmark run")
if hide:
    sys.meta_path.insert(0, Hidden())
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
OURS_TOKENIZERS = "hf-nanogpt prepare (tokenizers)"
OURS_TIKTOKEN = "hf-nanogpt prepare (tiktoken)"
NANOGPT = "nanoGPT's prepare.py approach"


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """JSON lines {"text": document} of about `megabytes` MB of text; returns the documents' bytes."""
    lines = stdlib_corpus(8_000_000).splitlines(keepends=True)
    rng, size = random.Random(seed), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            n = rng.randint(20, 400)
            start = rng.randrange(len(lines) - n)
            document = "".join(lines[start : start + n])
            f.write(json.dumps({"text": document}) + "\n")
            size += len(document.encode("utf-8"))
    return size


def measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; its wall time, and the peaks of its process tree's summed PSS and of its largest process's RSS."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        root, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            pss, rss = 0, 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    info = p.memory_full_info()
                    pss, rss = pss + info.pss, max(rss, info.rss)
            except psutil.Error:  # a worker ended while it was read
                pass
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[4:])} failed ({proc.returncode}):\n{err.read().decode()[-3000:]}")
    return {"seconds": seconds, "peak_pss": peak_pss, "peak_rss": peak_rss}


def tokens_written(out: Path) -> int:
    """Tokens in a prepared folder (uint16): train.bin + val.bin, or shards less their headers."""
    return sum((p.stat().st_size - (HEADER_BYTES if "_" in p.stem else 0)) // 2 for p in out.glob("*.bin"))


def sides(corpus: Path, out: Path, num_proc: int, tiktoken: str | None) -> dict[str, list[str]]:
    """The commands, by side; the tiktoken sides only where tiktoken can be imported."""
    ours = [
        "hf_nanogpt.cli",
        "prepare",
        str(corpus),
        str(out),
        "--tokenizer",
        "gpt2",
        "--num_proc",
        str(num_proc),
        "--overwrite",
    ]
    boot = [sys.executable, "-c", BOOT]
    commands = {OURS_TOKENIZERS: [*boot, "", "hide", *ours]}
    available = (
        tiktoken is not None
        or subprocess.run([sys.executable, "-c", "import tiktoken"], capture_output=True).returncode == 0
    )
    if available:
        commands[OURS_TIKTOKEN] = [*boot, tiktoken or "", "", *ours]
        commands[NANOGPT] = [
            *boot,
            tiktoken or "",
            "",
            "benchmarks.nanogpt_prepare",
            str(corpus),
            str(out),
            "--num-proc",
            str(num_proc),
        ]
    return commands


def fetch_vs_step(work: Path, corpus: Path, tiny: bool) -> dict:
    """Seconds to fetch a batch (12 x 1024, or tiny) from a shard folder made from `corpus`, against one
    forward and backward of GPT-2 124M (or TINY) at that batch, in the trainer's default dtype, eager."""
    shape, block, batch = (TINY, 32, 2) if tiny else (GPT2_124M, 1024, 12)
    shards = work / "shards"
    prepare(
        corpus,
        shards,
        tokenizer="gpt2",
        shard_tokens=200_000 if tiny else 2_000_000,
        overwrite=True,
        log=lambda *a: None,
    )
    data = TokenData(shards)
    generator = torch.Generator().manual_seed(1337)
    fetches = []
    for _ in range(200):
        start = time.perf_counter()
        x, y = data.random_batch("train", block, batch, generator)
        fetches.append(time.perf_counter() - start)
    _, model = gpt2_pair({**shape, "vocab_size": 50257}, work / "gpt2")
    model.train()
    dtype = auto_dtype(cuda=False)
    steps = []
    for _ in range(2):  # the first warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(x % shape["vocab_size"], shift_labels=y % shape["vocab_size"]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - start)
    return {
        "fetch": statistics.median(fetches),
        "fetch_max": max(fetches),
        "step": steps[-1],
        "shards": len(data.shards["train"]),
        "tokens": sum(map(len, data.shards["train"])),
        "block": block,
        "batch": batch,
        "dtype": dtype,
        "model": "tiny" if tiny else "GPT-2 124M",
    }


def run(sizes: list[float], num_proc: int, repeats: int, tiktoken: str | None, tiny: bool) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-", dir="/tmp") as tmp:
        work = Path(tmp)
        for megabytes in sizes:
            corpus = work / f"corpus-{megabytes}MB.jsonl"
            text_bytes = write_corpus(corpus, megabytes)
            commands = sides(corpus, work / "out", num_proc, tiktoken)
            runs = {name: [] for name in commands}
            for round_ in range(repeats):  # the sides take turns
                for name, cmd in commands.items():
                    env = {**_environment(), "HF_DATASETS_CACHE": str(work / f"cache-{name[:4]}-{round_}")}
                    runs[name].append({**measured(cmd, env), "tokens": tokens_written(work / "out")})
                    subprocess.run(["rm", "-rf", str(work / "out"), env["HF_DATASETS_CACHE"]], check=True)
            for name, results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                rows.append(
                    {
                        "side": name,
                        "megabytes": megabytes,
                        "text_bytes": text_bytes,
                        "seconds": seconds,
                        "tokens": results[0]["tokens"],
                        "peak_pss": statistics.median(r["peak_pss"] for r in results),
                        "peak_rss": statistics.median(r["peak_rss"] for r in results),
                        "repeats": repeats,
                    }
                )
            if megabytes != sizes[0]:
                corpus.unlink()
        fetch = fetch_vs_step(work, work / f"corpus-{sizes[0]}MB.jsonl", tiny)
    return {"rows": rows, "fetch": fetch, "num_proc": num_proc, "sizes": sizes}


def _environment() -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


def report(results: dict, command: str) -> str:
    rows, sizes = results["rows"], results["sizes"]
    by = {(r["side"], r["megabytes"]): r for r in rows}
    table = markdown_table(
        ["corpus", "side", "wall s", "MB/s", "tokens/s", "peak PSS, all processes", "largest process RSS", "runs"],
        [
            [
                f"{r['megabytes']:g} MB",
                r["side"],
                f"{r['seconds']:.1f}",
                f"{r['text_bytes'] / 1e6 / r['seconds']:.2f}",
                f"{r['tokens'] / r['seconds']:,.0f}",
                f"{r['peak_pss'] / 1e6:,.0f} MB",
                f"{r['peak_rss'] / 1e6:,.0f} MB",
                r["repeats"],
            ]
            for r in rows
        ],
    )
    small, large = sizes[0], sizes[-1]
    steps = list(zip(sizes, sizes[1:]))
    goal_rows = []
    for side in dict.fromkeys(r["side"] for r in rows):
        a, b = by[(side, small)], by[(side, large)]
        # linear time: the MB/s of the extra text from one size to the next, start-up left out
        extra = []
        for m, n in steps:
            lo, hi = by[(side, m)], by[(side, n)]
            extra.append((hi["text_bytes"] - lo["text_bytes"]) / 1e6 / max(hi["seconds"] - lo["seconds"], 1e-3))
        # the same text on both sides: throughput ratio = nanoGPT's seconds / ours
        vs = (
            [ratio_cell(by[(NANOGPT, m)]["seconds"] / by[(side, m)]["seconds"]) for m in sizes]
            if (NANOGPT, small) in by
            else []
        )
        goal_rows.append(
            [
                side,
                ratio_cell(b["peak_pss"] / a["peak_pss"]),
                " / ".join(f"{x:.2f}" for x in extra),
                " / ".join(vs) if vs and side != NANOGPT else "-",
            ]
        )
    goals = markdown_table(
        [
            "side",
            f"peak PSS {large:g} MB / {small:g} MB",
            f"MB/s of the extra text ({' / '.join(f'{m:g}->{n:g}' for m, n in steps)} MB)",
            f"throughput / nanoGPT's ({' / '.join(f'{m:g}' for m in sizes)} MB)",
        ],
        goal_rows,
    )
    f = results["fetch"]
    fetch = markdown_table(
        [
            "batch fetch (median of 200)",
            "slowest fetch",
            f"{f['model']} forward + backward ({f['dtype']}, eager)",
            "fetch / step",
            "shard folder",
        ],
        [
            [
                f"{f['fetch'] * 1e3:.3f} ms",
                f"{f['fetch_max'] * 1e3:.3f} ms",
                f"{f['step']:.2f} s",
                f"{100 * f['fetch'] / f['step']:.4f}%",
                f"{f['shards']} train shards, {f['tokens']:,} tokens",
            ]
        ],
    )
    missing = (
        ""
        if (NANOGPT, small) in by
        else ("\n\ntiktoken is not installed here: the tiktoken and nanoGPT sides were left out (`--tiktoken PATH`).")
    )
    return (
        f"{results['num_proc']} processes on every side.\n\n{table}\n\n{goals}\n\n"
        f"Batch {f['batch']} x block {f['block']} "
        f"from a shard folder (TokenData.random_batch, as the trainer draws; page cache warm):\n\n{fetch}{missing}\n\n"
        f"Reproduce: `{command}`"
    )


def benchmark(argv: list[str]) -> str:
    """Parse `argv`, run, and return the Markdown report (with the command that reproduces it)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=float, nargs="+", default=[40, 160, 640], help="corpus sizes in MB, smallest first")
    p.add_argument("--num-proc", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each side at each size (median)")
    p.add_argument(
        "--tiktoken", default=None, help="a folder tiktoken is installed in (pip install --target PATH tiktoken)"
    )
    p.add_argument(
        "--tiny", action="store_true", help="tiny corpora and a tiny model: checks the code, measures nothing"
    )
    args = p.parse_args(argv)
    sizes = [0.2, 0.4] if args.tiny else sorted(args.sizes)
    results = run(sizes, args.num_proc, args.repeats, args.tiktoken, args.tiny)
    return report(results, " ".join([p.prog, *argv]))


def main() -> None:
    print(benchmark(sys.argv[1:]))


if __name__ == "__main__":
    main()
