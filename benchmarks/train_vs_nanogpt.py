"""Quality and wall time of `hf-nanogpt train shakespeare_char_cpu` against nanoGPT's own train.py run
the same way (the CPU recipe of nanoGPT's README) on the same data, alternating the two.

    python benchmarks/train_vs_nanogpt.py --nanogpt ~/src/nanoGPT --repeats 2 [--dtype float32]

--nanogpt is a checkout of karpathy/nanoGPT whose data/shakespeare_char holds train.bin, val.bin and
meta.pkl (its prepare.py, or `hf-nanogpt prepare input.txt data/shakespeare_char`). nanoGPT runs with
the Python running this script (it needs torch and numpy). Prints a Markdown table with medians.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NANOGPT_CPU_RECIPE = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
FINAL_EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    evals = FINAL_EVAL.findall(result.stdout + result.stderr)
    return wall, float(evals[-1][2]), evals[-1][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="auto", help="hf_nanogpt's --dtype (nanoGPT computes in float32 on the CPU)")
    args = p.parse_args()
    data = args.nanogpt / "data" / "shakespeare_char"
    work = Path(tempfile.mkdtemp(prefix="train-vs-nanogpt-"))
    hf = [
        sys.executable,
        "-m",
        "hf_nanogpt.train",
        "shakespeare_char_cpu",
        f"--data_dir={data}",
        f"--dtype={args.dtype}",
    ]
    runs = {"nanoGPT train.py": [], f"hf_nanogpt (dtype {args.dtype})": []}
    for i in range(args.repeats):  # alternate, so both sides see the same machine load
        runs["nanoGPT train.py"].append(
            timed([sys.executable, "train.py", *NANOGPT_CPU_RECIPE, f"--out_dir={work}/nanogpt{i}"], args.nanogpt)
        )
        runs[f"hf_nanogpt (dtype {args.dtype})"].append(timed([*hf, f"--out_dir={work}/hf{i}"], args.nanogpt))
    base = statistics.median(w for w, _, _ in runs["nanoGPT train.py"])
    print("| run | val loss at step 2000 (each run) | wall s (median) | ratio to nanoGPT |")
    print("|---|---|---|---|")
    for name, results in runs.items():
        wall = statistics.median(w for w, _, _ in results)
        losses = ", ".join(f"{v:.4f}" for _, v, _ in results)
        print(f"| {name} | {losses} | {wall:.1f} | {wall / base:.2f}x |")


if __name__ == "__main__":
    main()
