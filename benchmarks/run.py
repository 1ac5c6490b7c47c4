"""`make bench`: run the side-by-side benchmarks and write BENCHMARKS.md.

    python -m benchmarks.run [--only generation training conversion] [--repeats 5] [--nanogpt PATH]
                             [--llama-cpp BUILD] [--out FILE]

Each benchmark's section is replaced in place; sections not run this time are kept from the existing
file. --nanogpt (a karpathy/nanoGPT checkout; `make bench NANOGPT=path`) adds generation rows against
nanoGPT's own generate; --llama-cpp (a llama.cpp build folder; `make bench LLAMA_CPP=path`) adds llama.cpp's
decoding on the same weights. --tiny runs every benchmark on a tiny model, to check that the code runs.
"""

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

from . import conversion, generation, training
from .common import machine, markdown_table

BENCHMARKS = {"generation": generation, "training": training, "conversion": conversion}
SECTIONS = {
    "generation": "B1: greedy generation against GPT2LMHeadModel and llama.cpp (CPU)",
    "training": "B2: a training step against GPT2LMHeadModel (CPU)",
    "conversion": "B3: conversion time and peak memory (gpt2-medium shape)",
}
NOTES = Path(__file__).with_name("notes.md")  # hand-written findings, appended as they are
HEADER = """# Benchmarks

Written by `make bench` (`python -m benchmarks.run`); each section says how to re-run it alone. Every
comparison runs both sides in one process (or in paired processes), the sides taking turns, after a
warm-up, and reports medians of at least 5 timed runs and the ratio ours/theirs. Timings on shared
machines are noisy: compare ratios taken in the same run, not absolute numbers across runs.

B4 (GPU: bf16 training MFU, generation at batch 1 and 32, CPU-GPU logits parity) is `make gpu-check`
(benchmarks/gpu_check.py), run apart on a GPU; its report goes here when one has run it. None has yet: no
GPU was lent to the sessions that wrote it (its CPU dry run is in the test suite).
"""


def section(name: str, body: str, info: dict) -> str:
    stamp = datetime.date.today().isoformat()
    machine_line = "; ".join(f"{k}: {v}" for k, v in info.items())
    return (
        f"<!-- bench:{name} -->\n## {SECTIONS[name]}\n\nMeasured {stamp}. {machine_line}.\n\n"
        f"{body}\n<!-- /bench:{name} -->"
    )


def existing_sections(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pattern = re.compile(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", re.S)
    return {m.group(1): m.group(0) for m in pattern.finditer(path.read_text())}


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nanogpt", type=Path, default=None, help="karpathy/nanoGPT checkout for the rows against it")
    p.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp build folder for the rows against it")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--tiny", action="store_true", help="tiny models and few steps: checks the code, measures nothing")
    args = p.parse_args(argv)

    info = machine()
    print(markdown_table(list(info), [list(info.values())]), flush=True)
    sections = existing_sections(args.out)
    common = ["--repeats", str(args.repeats), *(["--tiny"] if args.tiny else [])]
    for name in args.only:
        print(f"\n== {SECTIONS[name]}", flush=True)
        extra = []
        if name == "generation":
            extra += ["--nanogpt", str(args.nanogpt)] if args.nanogpt else []
            extra += ["--llama-cpp", str(args.llama_cpp)] if args.llama_cpp else []
        body = BENCHMARKS[name].benchmark([*common, *extra])
        print(body, flush=True)
        sections[name] = section(name, body, info)
    parts = [HEADER, *(sections[name] for name in SECTIONS if name in sections)]
    if NOTES.is_file():
        parts.append(NOTES.read_text())
    write_atomically(args.out, "\n\n".join(part.strip() for part in parts) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
