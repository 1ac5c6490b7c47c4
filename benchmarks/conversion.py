"""B3: time and peak memory of the conversions into hf_nanogpt, on a gpt2-medium-shaped checkpoint.

    python -m benchmarks.conversion [--repeats 5]

Random weights in gpt2-medium's shape (24 layers, 16 heads, 1024 dims: 355M parameters, 1.42 GB in
float32), written as a GPT2LMHeadModel folder and, through hf_nanogpt, as a nanoGPT ckpt.pt. Each
conversion runs as `hf-nanogpt convert ...` in its own process (built-in logits check included), the
two commands taking turns; peak RSS is the process's own (benchmarks/peak_rss.py). Target: peak RSS at
most 1.3x the checkpoint's bytes.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from hf_nanogpt.conversion.gpt2 import convert_gpt2
from hf_nanogpt.conversion.nanogpt import export_nanogpt

from .common import GPT2_MEDIUM, TINY, gpt2_pair, markdown_table

TARGET = 1.3
TINY_GPT2 = {**TINY, "vocab_size": 50257}  # GPT-2's vocabulary: the conversion brings GPT-2's tokenizer


def measured(cmd: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.peak_rss", *cmd],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout)


def run(repeats: int = 5, shape: dict = GPT2_MEDIUM) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-conversion-") as tmp:
        work = Path(tmp)
        gpt2, ours = gpt2_pair(shape, work / "gpt2")
        del gpt2, ours
        convert_gpt2(work / "gpt2", work / "ours", log=lambda *a: None)
        export_nanogpt(work / "ours", work / "nanogpt", log=lambda *a: None)
        cli = [sys.executable, "-m", "hf_nanogpt.cli", "convert"]
        commands = {
            "GPT-2 -> hf_nanogpt": (
                [*cli, "gpt2", str(work / "gpt2"), str(work / "out-gpt2"), "--overwrite"],
                work / "gpt2" / "model.safetensors",
            ),
            "nanoGPT -> hf_nanogpt": (
                [*cli, "nanogpt", str(work / "nanogpt"), str(work / "out-nanogpt"), "--overwrite"],
                work / "nanogpt" / "ckpt.pt",
            ),
        }
        runs = {name: [] for name in commands}
        baseline = []  # Python with torch, transformers and hf_nanogpt's conversion code imported, nothing loaded
        for _ in tqdm(range(repeats), desc="B3 conversions", unit="round", leave=False):  # the commands take turns
            for name, (cmd, _) in commands.items():
                runs[name].append(measured(cmd))
            baseline.append(
                measured(
                    [
                        sys.executable,
                        "-c",
                        "import hf_nanogpt.cli, hf_nanogpt.conversion.gpt2, hf_nanogpt.conversion.nanogpt",
                    ]
                )
            )
        imports = statistics.median(r["peak_rss"] for r in baseline)
        rows = []
        for name, (cmd, source) in commands.items():
            size = source.stat().st_size
            peak = statistics.median(r["peak_rss"] for r in runs[name])
            rows.append(
                {
                    "conversion": name,
                    "source": source.name,
                    "source_bytes": size,
                    "seconds": statistics.median(r["seconds"] for r in runs[name]),
                    "peak_rss": peak,
                    "peak_rss_max": max(r["peak_rss"] for r in runs[name]),
                    "ratio": peak / size,
                    "repeats": repeats,
                    "imports_rss": imports,
                    "above_imports": (peak - imports) / size,
                    "command": "hf-nanogpt convert " + " ".join(cmd[len(cli) :]).replace(str(work), "$TMP"),
                }
            )
    return {"rows": rows, "shape": shape}


def report(results: dict, command: str) -> str:
    rows = [
        [
            r["conversion"],
            r["source"],
            f"{r['source_bytes'] / 1e9:.2f} GB",
            f"{r['seconds']:.1f}",
            f"{r['peak_rss'] / 1e9:.2f} GB",
            f"{r['peak_rss_max'] / 1e9:.2f} GB",
            f"{r['ratio']:.2f}x",
            f"{r['imports_rss'] / 1e9:.2f} GB",
            f"{r['above_imports']:.2f}x",
            r["repeats"],
            f"`{r['command']}`",
        ]
        for r in results["rows"]
    ]
    table = markdown_table(
        [
            "conversion",
            "source",
            "source bytes",
            "wall s (median)",
            "peak RSS (median)",
            "peak RSS (max)",
            "peak RSS / source bytes",
            "RSS of the imports alone",
            "(peak - imports) / source bytes",
            "runs",
            "command",
        ],
        rows,
    )
    return (
        f"{table}\n\nTarget: peak RSS at most {TARGET}x the checkpoint's bytes. The imports (Python, torch, "
        f"transformers) are a fixed cost, measured alone in the same loop; the last ratio is what the conversion "
        f"itself holds.\n\nReproduce: `{command}`"
    )


def benchmark(argv: list[str]) -> str:
    """Parse `argv`, run, and return the Markdown report (with the command that reproduces it)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.conversion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="a tiny model, for checking that the code runs")
    args = p.parse_args(argv)
    results = run(args.repeats, TINY_GPT2 if args.tiny else GPT2_MEDIUM)
    return report(results, " ".join([p.prog, *argv]))


def main() -> None:
    print(benchmark(sys.argv[1:]))


if __name__ == "__main__":
    main()
