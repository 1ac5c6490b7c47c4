"""Val loss against iterations and against training time: AdamW (nanoGPT's recipe) and Muon, same model.

    python -m benchmarks.optimizers --data_dir /work/shared/data/shakespeare_char --repeats 2 \\
        [--nanogpt ~/src/nanoGPT] [--run "muon-0.08=--optimizer=muon --muon_learning_rate=0.08" ...]

Every run is `hf-nanogpt train shakespeare_char_cpu` (nanoGPT README's CPU recipe: 4 layers, 4 heads, 128
dims, block 64, batch 12, 2000 iterations, eval_iters 20) on the same data, in its own process, with the
val loss evaluated every --eval_interval iterations; the runs take turns, so all see the same machine load.
Evaluation draws its windows from a seeded generator, so every run is evaluated on the same windows at the
same iteration. Training time is the sum of the trainer's per-iteration `dt` (log.jsonl: forward,
backward, optimizer step; evaluation and checkpoints excluded); wall is the whole process.

--nanogpt adds nanoGPT's own train.py, run as benchmarks/train_vs_nanogpt.py runs it (a checkout whose
data/shakespeare_char holds the same data), evaluated at the same iterations; its training time is the sum
of its logged per-iteration times, the iterations that evaluated counted at its median step time.

A run's ARGS may set its own --max_iters and --lr_decay_iters (a shorter schedule). Prints a Markdown
table (iterations and training seconds to reach --target, their ratios to adamw's, val loss at the last
iteration, process wall), writes the curves as a PNG (--png) and the raw results as JSON (--json).
"""

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .train_vs_nanogpt import FINAL_EVAL, NANOGPT_CPU_RECIPE

# nanoGPT's recipe, and Muon with its defaults (the best setting of the sweep in BENCHMARKS.md: muon_learning_rate
# 0.02, nanoGPT's cosine schedule)
DEFAULT_RUNS = {
    "adamw": "",
    "muon": "--optimizer=muon",
}
NANOGPT_STEP_TIME = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def hf_run(args: str, data_dir: Path, out_dir: Path, eval_interval: int, max_iters: int) -> dict:
    """One `hf-nanogpt train shakespeare_char_cpu` run: its evaluations and cumulative training time."""
    cmd = [
        sys.executable,
        "-m",
        "hf_nanogpt.train",
        "shakespeare_char_cpu",
        f"--data_dir={data_dir}",
        f"--out_dir={out_dir}",
        f"--eval_interval={eval_interval}",
        f"--max_iters={max_iters}",
        f"--lr_decay_iters={max_iters}",
        "--log_with=none",
        *shlex.split(args),
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    elapsed, seconds = 0.0, {}
    for entry in log:
        if "dt" in entry:
            seconds[entry["iter"]] = elapsed  # training time before this iteration's step
            elapsed += entry["dt"]
    seconds[max_iters + 1] = elapsed
    evals = [(e["iter"], e["val_loss"]) for e in log if "val_loss" in e]
    return {
        "evals": [{"iter": it, "val": val, "train_s": seconds.get(it, elapsed)} for it, val in evals],
        "wall_s": wall,
    }


def nanogpt_run(nanogpt: Path, out_dir: Path, eval_interval: int, max_iters: int) -> dict:
    """nanoGPT's train.py on its CPU recipe, evaluated every eval_interval iterations."""
    cmd = [
        sys.executable,
        "train.py",
        *NANOGPT_CPU_RECIPE,
        f"--out_dir={out_dir}",
        f"--eval_interval={eval_interval}",
        f"--max_iters={max_iters}",
        f"--lr_decay_iters={max_iters}",
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=nanogpt, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    steps = {int(it): float(ms) / 1e3 for it, ms in NANOGPT_STEP_TIME.findall(result.stdout)}
    median = statistics.median(steps.values())
    elapsed, seconds = 0.0, {}
    for it in sorted(steps):
        seconds[it] = elapsed
        elapsed += median if it % eval_interval == 0 else steps[it]  # its dt includes the evaluation there
    evals = [(int(it), float(val)) for it, _, val in FINAL_EVAL.findall(result.stdout)]
    return {
        "evals": [{"iter": it, "val": val, "train_s": seconds.get(it, elapsed)} for it, val in evals],
        "wall_s": wall,
    }


def first_below(evals: list[dict], target: float) -> dict | None:
    return next((e for e in evals if e["val"] <= target), None)


def summarise(runs: dict[str, list[dict]], target: float, reference: str = "adamw") -> list[list]:
    """Per run name, medians over its repeats; ratios against `reference`'s training time to `target`
    and over all its iterations."""

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def stats(results):
        reached = [first_below(r["evals"], target) for r in results]
        return {
            "iter": med([e["iter"] if e else None for e in reached]),
            "train_s": med([e["train_s"] if e else None for e in reached]),
            "reached": sum(e is not None for e in reached),
            "full_s": med([r["evals"][-1]["train_s"] for r in results]),
            "final": [r["evals"][-1]["val"] for r in results],
            "best": [min(e["val"] for e in r["evals"]) for r in results],
            "wall_s": med([r["wall_s"] for r in results]),
        }

    table = {name: stats(results) for name, results in runs.items()}
    ref = table.get(reference)
    rows = []
    for name, s in table.items():
        to_target = (
            f"{s['iter']:.0f}" if s["iter"] is not None else "not reached"
        ) + f" ({s['reached']}/{len(runs[name])} runs)"
        seconds = f"{s['train_s']:.1f}" if s["train_s"] is not None else "-"
        vs_ref = f"{s['train_s'] / ref['train_s']:.2f}x" if ref and s["train_s"] and ref["train_s"] else "-"
        vs_full = f"{s['train_s'] / ref['full_s']:.2f}x" if ref and s["train_s"] else "-"
        rows.append(
            [
                name,
                to_target,
                seconds,
                vs_ref,
                vs_full,
                ", ".join(f"{v:.4f}" for v in s["final"]),
                ", ".join(f"{v:.4f}" for v in s["best"]),
                f"{s['full_s']:.1f}",
                f"{s['wall_s']:.1f}",
            ]
        )
    return rows


def plot(runs: dict[str, list[dict]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, results), color in zip(runs.items(), colors):
        for i, r in enumerate(results):
            evals = [e for e in r["evals"] if e["iter"] > 0]
            label = name if i == 0 else None
            axes[0].plot([e["iter"] for e in evals], [e["val"] for e in evals], color=color, alpha=0.85, label=label)
            axes[1].plot(
                [e["train_s"] for e in evals], [e["val"] for e in evals], color=color, alpha=0.85, label=label
            )
    for ax, xlabel in zip(axes, ("iteration", "training time (s, evaluation excluded)")):
        ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(top=2.6)
    axes[0].set_ylabel("val loss (eval_iters 20)")
    axes[0].legend()
    fig.suptitle(f"shakespeare_char_cpu: val loss, target {target} dashed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.optimizers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data_dir", type=Path, default=Path("data/shakespeare_char"))
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="a run: its name and `hf-nanogpt train` arguments (repeatable; default: adamw and muon)",
    )
    p.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: add its own train.py as a run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--eval_interval", type=int, default=100)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--target", type=float, default=1.99, help="the val loss to reach (nanoGPT's at 2000 iterations)")
    p.add_argument("--png", type=Path, default=Path("benchmarks/optimizers.png"))
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args()
    specs = dict(spec.split("=", 1) for spec in args.run) if args.run else DEFAULT_RUNS
    work = Path(tempfile.mkdtemp(prefix="bench-optimizers-"))
    runs = {name: [] for name in ([*specs, "nanoGPT train.py"] if args.nanogpt else specs)}
    for i in range(args.repeats):  # take turns
        for name, extra in specs.items():
            runs[name].append(hf_run(extra, args.data_dir, work / f"{name}-{i}", args.eval_interval, args.max_iters))
            print(f"{name} #{i}: val {runs[name][-1]['evals'][-1]['val']:.4f}", file=sys.stderr, flush=True)
        if args.nanogpt:
            runs["nanoGPT train.py"].append(
                nanogpt_run(args.nanogpt, work / f"nanogpt-{i}", args.eval_interval, args.max_iters)
            )
    if args.json:
        args.json.write_text(json.dumps({"specs": specs, "runs": runs, "target": args.target}, indent=1) + "\n")
    plot(runs, args.target, args.png)
    print(
        "| run | iterations to val <= {t} | training s to {t} | ratio to adamw's s to {t} | ratio to adamw's s for "
        "its whole run | val at the last iteration (each run) | best val (each run) | training s, whole run | "
        "process wall s |".format(t=args.target)
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in summarise(runs, args.target):
        print("| " + " | ".join(map(str, row)) + " |")
    for name, extra in specs.items():
        print(f"- {name}: `hf-nanogpt train shakespeare_char_cpu{' ' + extra if extra else ''}`")
    print(f"\nReproduce: `python -m benchmarks.optimizers {shlex.join(sys.argv[1:])}`")


if __name__ == "__main__":
    main()
