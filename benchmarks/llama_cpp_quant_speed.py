"""Decode speed of quantized GGUFs in llama.cpp: llama-bench's token generation (tg) on one GPT-2 124M-shaped
model exported by `hf-nanogpt export gguf` as f32, q8_0, q5_0 and q4_0 (the same weights).

    python -m benchmarks.llama_cpp_quant_speed --llama-cpp path/to/llama.cpp/build [--workdir /tmp/b5]
        [--repeats 5] [--tokens 128] [--threads 2]

The model folder (random weights, seed 0, GPT-2's tokenizer, nanoGPT's padded vocabulary 50304: speed does not
depend on the values) is WORKDIR/gpt2-124m, the files WORKDIR/gpt2-124m-{outtype}.gguf. Each round runs
`llama-bench -m FILE -p 0 -n TOKENS -t THREADS -r 1` (llama-bench warms up first) once per file, the types
taking turns; the table gives each type's median and best tokens/s over the rounds and their ratios to f32's.
"""

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import torch

from benchmarks.llama_cpp_parity import GPT2_124M
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.conversion.gguf import export_gguf
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

OUTTYPES = ["f32", "q8_0", "q5_0", "q4_0"]


def gpt2_124m_ggufs(workdir: Path, outtypes: list[str]) -> dict[str, Path]:
    """WORKDIR/gpt2-124m (made once) exported in each type: outtype -> GGUF file."""
    folder = workdir / "gpt2-124m"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        save_model_folder(NanoGPTForCausalLM(NanoGPTConfig(**GPT2_124M)), folder, gpt2_tokenizer(), overwrite=True)
    files = {}
    for outtype in outtypes:
        files[outtype] = export_gguf(
            folder, workdir / f"gpt2-124m-{outtype}.gguf", outtype=outtype, overwrite=True, log=lambda *a: None
        )
    return files


def tokens_per_second(bench: Path, gguf: Path, tokens: int, threads: int) -> float:
    args = [str(bench), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads), "-r", "1", "-o", "json"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {result.stderr[-2000:]}")
    return float(json.loads(result.stdout)[0]["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp build folder (bin/llama-bench)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/b5"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--outtypes", nargs="+", default=OUTTYPES, choices=OUTTYPES)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = gpt2_124m_ggufs(args.workdir, args.outtypes)

    speeds = {outtype: [] for outtype in files}
    for round_ in range(args.repeats):
        for outtype, gguf in files.items():
            speeds[outtype].append(
                tokens_per_second(args.llama_cpp / "bin" / "llama-bench", gguf, args.tokens, args.threads)
            )
        print(f"round {round_ + 1}: " + ", ".join(f"{t} {s[-1]:.1f}" for t, s in speeds.items()), flush=True)

    # the machine is shared: others' work only slows a run down, so the best run is the least disturbed one
    base, best_base = statistics.median(speeds[args.outtypes[0]]), max(speeds[args.outtypes[0]])
    print(
        f"\n| GGUF | size | tg{args.tokens} tokens/s, median (min-max) | median vs {args.outtypes[0]} | best "
        f"| best vs {args.outtypes[0]} |\n|---|---|---|---|---|---|"
    )
    for outtype, values in speeds.items():
        median, best, size = statistics.median(values), max(values), files[outtype].stat().st_size / 1e6
        spread = f"{min(values):.1f}-{best:.1f}"
        print(
            f"| {outtype} | {size:.1f} MB | {median:.1f} ({spread}) | {median / base:.2f}x | {best:.1f} "
            f"| {best / best_base:.2f}x |"
        )


if __name__ == "__main__":
    main()
