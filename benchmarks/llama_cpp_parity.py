"""llama.cpp parity of `hf-nanogpt export gguf`: greedy tokens and perplexity, llama.cpp against ours.

    python -m benchmarks.llama_cpp_parity --llama-cpp path/to/llama.cpp/build [--workdir DIR] [--tokens 100]
        [--outtypes f32 f16 q8_0 q5_0 q4_0] [--models gpt2-124M B_bpe_bias A_char_nobias]

Models: a randomly initialised GPT-2 124M shape (12 layers, 12 heads, 768 dims, context 1024, nanoGPT's
padded vocabulary 50304, tanh GELU "gelu_new", the function llama.cpp computes; real GPT-2 weights are
not available offline, so this checks the numerics, not a trained model's behaviour), and the trained
nanoGPT fixtures tests/fixtures/nanogpt/B_bpe_bias (GPT-2 BPE, biases) and A_char_nobias (char level, no
biases), both exact GELU, so llama.cpp computes a slightly different function; their greedy run is
nanoGPT's own (greedy.json: "ROMEO:", 40 tokens), which is compared too. Each is exported to GGUF in every
--outtypes type and run by llama.cpp's llama-simple (greedy) and llama-perplexity, against our model in
float32 on the same tokens and context. Prints a markdown table (benchmarks/notes.md).
"""

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.conversion.gguf import export_gguf, llama_cpp_perplexity
from hf_nanogpt.conversion.nanogpt import convert_nanogpt
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "fixtures" / "shakespeare_char" / "input_head.txt"
FIXTURES = ROOT / "tests" / "fixtures" / "nanogpt"
PROMPT = "Hello, I'm a language model,"
OUTTYPES = ["f32", "f16", "q8_0", "q5_0", "q4_0"]
GPT2_124M = dict(
    n_layer=12,
    n_head=12,
    n_embd=768,
    block_size=1024,
    vocab_size=50304,
    bias=True,
    dropout=0.0,
    activation_function="gelu_new",
)


def make_models(workdir: Path, names: list[str]) -> dict[str, tuple[Path, int, str, list[int] | None]]:
    """name -> (model folder, perplexity context, prompt, nanoGPT's own greedy ids for it or None)."""
    models = {}
    if "gpt2-124M" in names:
        torch.manual_seed(0)
        folder = workdir / "gpt2-124M-random"
        save_model_folder(NanoGPTForCausalLM(NanoGPTConfig(**GPT2_124M)), folder, gpt2_tokenizer(), overwrite=True)
        models["GPT-2 124M shape, random init, gelu_new"] = (folder, 1024, PROMPT, None)
    for fixture, kind in (
        ("B_bpe_bias", "trained fixture, BPE, exact GELU"),
        ("A_char_nobias", "trained fixture, char"),
    ):
        if fixture in names:
            convert_nanogpt(FIXTURES / fixture, workdir / fixture, overwrite=True, log=lambda *a: None)
            reference = json.loads((FIXTURES / fixture / "greedy.json").read_text())
            models[f"{fixture} ({kind})"] = (workdir / fixture, 64, reference["prompt_text"], reference["new_ids"])
    return models


def greedy(model, tokenizer, prompt: str, n: int) -> tuple[list[int], str, float]:
    """Our greedy continuation of `prompt`: new ids, the whole text, and the smallest top-1 - top-2 logit margin."""
    ids = torch.tensor([tokenizer(prompt).input_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_length=ids.shape[1] + n,
        max_new_tokens=None,
        output_scores=True,
        return_dict_in_generate=True,
    )
    margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
    new = out.sequences[0, ids.shape[1] :].tolist()
    return new, tokenizer.decode(out.sequences[0], clean_up_tokenization_spaces=False), margin


def tokens_matched(tokenizer, prompt: str, new: list[int], ours: str, theirs: str) -> int:
    """How many of our new tokens llama.cpp's text reproduces, from the start."""
    common = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return max(k for k in range(len(new) + 1) if len(prompt) + len(tokenizer.decode(new[:k])) <= common)


def run(binary: Path, *args: str) -> tuple[str, str]:
    """(stdout, stderr) of a llama.cpp tool, bytes decoded as llama-simple prints them (invalid UTF-8 replaced)."""
    result = subprocess.run([str(binary), *args], capture_output=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{binary.name} failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode("utf-8", errors="replace"), result.stderr.decode("utf-8", errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-cpp", required=True, type=Path, help="llama.cpp build folder (bin/llama-simple, bin/llama-perplexity)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--tokens", type=int, default=100, help="greedy tokens to generate (the fixtures: nanoGPT's 40)"
    )
    parser.add_argument("--text-chars", type=int, default=40_000, help="characters of the text file for perplexity")
    parser.add_argument("--outtypes", nargs="+", default=OUTTYPES, choices=OUTTYPES)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["gpt2-124M", "B_bpe_bias", "A_char_nobias"],
        choices=["gpt2-124M", "B_bpe_bias", "A_char_nobias"],
    )
    args = parser.parse_args()
    bin_dir = args.llama_cpp / "bin"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llama_cpp_parity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    text = workdir / "text.txt"
    text.write_text(TEXT.read_text()[: args.text_chars])

    rows = []
    for name, (folder, n_ctx, prompt, nanogpt_new) in make_models(workdir, args.models).items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        n = (
            len(nanogpt_new)
            if nanogpt_new
            else min(args.tokens, model.config.block_size - len(tokenizer(prompt).input_ids))
        )
        new, ours_text, margin = greedy(model, tokenizer, prompt, n)
        nanogpt = "" if nanogpt_new is None else " (= nanoGPT's)" if new == nanogpt_new else " (NOT nanoGPT's)"
        ids = torch.tensor(tokenizer(text.read_text()).input_ids)
        ours_ppl = llama_cpp_perplexity(model, ids, n_ctx)
        for outtype in args.outtypes:
            out = workdir / f"{folder.name}-{outtype}.gguf"
            start = time.perf_counter()
            export_gguf(folder, out, outtype=outtype, overwrite=True, log=lambda *a: None)
            export_s = time.perf_counter() - start
            theirs_text = run(bin_dir / "llama-simple", "-m", str(out), "-n", str(n), prompt)[0].removesuffix("\n")
            matched = tokens_matched(tokenizer, prompt, new, ours_text, theirs_text)
            # the last lines of llama.cpp's log are sometimes lost at exit (its log thread is not flushed): rerun
            for _ in range(3):
                ppl_log = "".join(run(bin_dir / "llama-perplexity", "-m", str(out), "-f", str(text), "-c", str(n_ctx)))
                found = re.search(r"Final estimate: PPL = ([\d.]+|nan|inf)", ppl_log)
                if found:
                    break
            else:
                raise RuntimeError(f"llama-perplexity printed no final estimate: {ppl_log[-2000:]}")
            theirs_ppl = float(found.group(1))
            rows.append(
                [
                    name,
                    outtype,
                    f"{out.stat().st_size / 1e6:.1f} MB",
                    f"{export_s:.1f} s",
                    f"{matched}/{len(new)}" + (" (identical)" if theirs_text == ours_text else "") + nanogpt,
                    f"{margin:.2e}",
                    f"{theirs_ppl:.4f}",
                    f"{ours_ppl:.4f}",
                    f"{theirs_ppl / ours_ppl - 1:+.1e}",
                    f"{len(ids) // n_ctx} x {n_ctx}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
        del model

    header = [
        "model",
        "GGUF",
        "size",
        "export",
        "greedy tokens equal",
        "min top-2 margin (ours)",
        "llama.cpp PPL",
        "our PPL (f32)",
        "relative diff",
        "chunks x n_ctx",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
