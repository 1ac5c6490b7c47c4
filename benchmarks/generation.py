"""B1: greedy generation, hf_nanogpt against GPT2LMHeadModel (and nanoGPT's generate) on the same weights.

    python -m benchmarks.generation [--batch 1 8] [--modes eager static-compile] [--nanogpt PATH]

GPT-2 124M shape, random weights converted by hf_nanogpt's GPT-2 conversion; CPU, float32; a 32-token
prompt and 128 new tokens (min_new_tokens = max_new_tokens, so every run makes them all). The tokens of
the two models are compared in the run. Prints Markdown.
"""

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
from transformers import StaticCache

from hf_nanogpt import NanoGPTForCausalLM
from hf_nanogpt.modeling_nanogpt import CACHE_NAME

from .common import (
    GPT2_124M,
    TINY,
    alternate,
    gpt2_pair,
    markdown_table,
    parameter_bytes,
    ratio_cell,
)

PROMPT_TOKENS = 32
NEW_TOKENS = 128
MODES = ("eager", "static-compile")


def greedy(model, prompt: torch.Tensor, new_tokens: int, mode: str, cache_len: int | None = None) -> torch.Tensor:
    """Greedy tokens. static-compile: a StaticCache of `cache_len` (default: prompt plus new tokens); a
    prefill-only call passes the full run's length, so it reuses the compiled graphs instead of adding one."""
    extra = {}
    if mode == "static-compile":
        length = cache_len or prompt.shape[1] + new_tokens
        extra[CACHE_NAME] = StaticCache(config=model.config, max_cache_len=length)
    with torch.inference_mode():
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **extra,
        )


def compiled(model):
    """The model with its forward compiled as generate() uses it on the CPU (generate does not compile
    there by itself): full graph, static shapes (one graph for the prefill, one for a decode step)."""
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
    return model


def compare(gpt2, ours, batch: int, mode: str, repeats: int, new_tokens: int = NEW_TOKENS, probe_mb: int = 0) -> dict:
    """Tokens/s of both models; with probe_mb, the read-bandwidth probe takes turns with them too."""
    vocab = gpt2.config.vocab_size
    prompt = torch.randint(vocab, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(batch))
    tokens = {}

    def full_run(name, model):
        def run_once():
            tokens[name] = greedy(model, prompt, new_tokens, mode)
        return run_once

    sides = {
        "gpt2": full_run("gpt2", gpt2),
        "ours": full_run("ours", ours),
        # the prompt alone, to separate decoding from the prefill
        "gpt2 prefill": lambda: greedy(gpt2, prompt, 1, mode, PROMPT_TOKENS + new_tokens),
        "ours prefill": lambda: greedy(ours, prompt, 1, mode, PROMPT_TOKENS + new_tokens),
    }
    if probe_mb:
        block = torch.ones(probe_mb * 2**20 // 4)  # float32, far larger than any cache
        sides["read probe"] = lambda: block.sum()
    t = alternate(sides, repeats, desc=f"B1 batch {batch}, {mode}")
    same = torch.equal(tokens["gpt2"], tokens["ours"])  # the last timed runs' tokens
    decode_steps = new_tokens - 1  # the first new token comes out of the prefill
    return {
        "batch": batch,
        "mode": mode,
        "same_tokens": same,
        "gpt2_tok_s": batch * new_tokens / t.median("gpt2"),
        "ours_tok_s": batch * new_tokens / t.median("ours"),
        "speedup": t.median("gpt2") / t.median("ours"),
        "gpt2_decode_steps_s": decode_steps / (t.median("gpt2") - t.median("gpt2 prefill")),
        "ours_decode_steps_s": decode_steps / (t.median("ours") - t.median("ours prefill")),
        "read_bandwidth": probe_mb * 2**20 / t.median("read probe") if probe_mb else None,
        "repeats": repeats,
    }


def load_nanogpt(nanogpt_dir: Path, ours: NanoGPTForCausalLM):
    """nanoGPT's GPT from a checkout's model.py, holding `ours`'s weights (not part of this package)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = ours.config
    config = module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                              n_embd=c.n_embd, dropout=0.0, bias=c.bias)
    model = module.GPT(config).eval()
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or any(not key.endswith(".attn.bias") for key in missing):
        raise RuntimeError(f"nanoGPT's GPT does not take hf_nanogpt's keys: missing {missing}, unexpected {unexpected}")
    return model


def compare_nanogpt(nanogpt_dir: Path, ours, new_tokens: int, repeats: int) -> dict:
    """Batch 1 greedy: nanoGPT's generate (no KV cache, recomputes the window every token; top_k=1 is its
    greedy) against ours with its default cache. nanoGPT's GELU is the exact one, so ours is rebuilt
    with activation "gelu" on the same weights: the tokens then agree."""
    config = ours.config.__class__(**{**ours.config.to_dict(), "activation_function": "gelu"})
    exact = NanoGPTForCausalLM(config).eval()
    exact.load_state_dict(ours.state_dict())
    nanogpt = load_nanogpt(nanogpt_dir, exact)
    prompt = torch.randint(config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))

    outputs = {}

    def run_nanogpt(n=new_tokens):
        with torch.no_grad():
            outputs["nanogpt"] = nanogpt.generate(prompt, n, temperature=1.0, top_k=1)

    def run_ours(n=new_tokens):
        outputs["ours"] = greedy(exact, prompt, n, "eager")

    alternate({"nanogpt": lambda: run_nanogpt(8), "ours": lambda: run_ours(8)}, 0, 1, "B1 nanoGPT warm-up")
    # the warm-up is short: a full nanoGPT run at 512 tokens takes minutes
    t = alternate({"nanogpt": run_nanogpt, "ours": run_ours}, repeats, 0, f"B1 against nanoGPT, {new_tokens} tokens")
    same = torch.equal(outputs["nanogpt"], outputs["ours"])  # the last timed run's tokens
    return {
        "new_tokens": new_tokens,
        "same_tokens": same,
        "nanogpt_tok_s": new_tokens / t.median("nanogpt"),
        "ours_tok_s": new_tokens / t.median("ours"),
        "speedup": t.median("nanogpt") / t.median("ours"),
        "repeats": repeats,
    }


def run(batches=(1, 8), modes=MODES, repeats: int = 5, nanogpt: Path | None = None, nanogpt_tokens=(128, 512),
        shape: dict = GPT2_124M, new_tokens: int = NEW_TOKENS, probe_mb: int = 640) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        gpt2, ours = gpt2_pair(shape, Path(tmp) / "gpt2")
    results = {"rows": [], "nanogpt": [], "parameter_bytes": parameter_bytes(ours), "new_tokens": new_tokens}
    for mode in modes:
        if mode == "static-compile":
            torch._dynamo.reset()
            gpt2, ours = compiled(gpt2), compiled(ours)
        for batch in batches:
            probe = probe_mb if batch == 1 else 0  # the bandwidth table is for batch 1
            results["rows"].append(compare(gpt2, ours, batch, mode, repeats, new_tokens, probe))
    if nanogpt is not None:
        ours_eager = ours
        if "static-compile" in modes:  # back to the plain forward
            del ours_eager.forward
        for n in nanogpt_tokens:
            results["nanogpt"].append(compare_nanogpt(nanogpt, ours_eager, n, repeats))
    return results


def report(results: dict, command: str) -> str:
    rows = [
        [r["batch"], r["mode"], f"{r['gpt2_tok_s']:.1f}", f"{r['ours_tok_s']:.1f}", ratio_cell(r["speedup"]),
         "yes" if r["same_tokens"] else "**no**", r["repeats"]]
        for r in results["rows"]
    ]
    out = [markdown_table(["batch", "cache and compile", "GPT2LMHeadModel tokens/s", "hf_nanogpt tokens/s",
                           "ours/theirs (tokens/s)", "same greedy tokens", "timed runs"], rows)]
    gb = results["parameter_bytes"] / 1e9
    bw_rows = []
    for r in results["rows"]:
        if r["read_bandwidth"] is None:
            continue
        probe = r["read_bandwidth"] / 1e9
        for side, name in (("gpt2", "GPT2LMHeadModel"), ("ours", "hf_nanogpt")):
            steps = r[f"{side}_decode_steps_s"]
            bw = results["parameter_bytes"] * steps / 1e9
            bw_rows.append([name, r["mode"], f"{1e3 / steps:.1f}", f"{bw:.1f}", f"{probe:.1f}", f"{100 * bw / probe:.0f}%"])
    if bw_rows:
        out.append(
            f"\nDecoding at batch 1 reads every weight once per token: effective weight bandwidth = parameter bytes "
            f"({gb:.3f} GB) x decode steps/s (the prefill timed apart and left out). The read probe, torch.sum over a "
            f"float32 tensor far larger than the caches, takes turns with the two models in the same loop.\n"
        )
        out.append(markdown_table(["model", "cache and compile", "ms per decode step", "effective GB/s",
                                   "read probe GB/s", "of the read probe"], bw_rows))
    if results["nanogpt"]:
        rows = [
            [1, r["new_tokens"], f"{r['nanogpt_tok_s']:.1f}", f"{r['ours_tok_s']:.1f}", ratio_cell(r["speedup"]),
             "yes" if r["same_tokens"] else "**no**", r["repeats"]]
            for r in results["nanogpt"]
        ]
        out.append("\nAgainst nanoGPT's `GPT.generate` (no KV cache; `top_k=1` is its greedy), same weights, "
                   "exact GELU on both sides:\n")
        out.append(markdown_table(["batch", "new tokens", "nanoGPT tokens/s", "hf_nanogpt tokens/s",
                                   "ours/theirs (tokens/s)", "same greedy tokens", "timed runs"], rows))
    out.append(f"\nReproduce: `{command}`")
    return "\n".join(out)


def benchmark(argv: list[str]) -> str:
    """Parse `argv`, run, and return the Markdown report (with the command that reproduces it)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nanogpt", type=Path, help="a karpathy/nanoGPT checkout: adds the rows against its generate")
    p.add_argument("--nanogpt-tokens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--tiny", action="store_true", help="a tiny model, for checking that the code runs")
    args = p.parse_args(argv)
    if args.nanogpt is not None and not (args.nanogpt / "model.py").is_file():
        p.error(f"--nanogpt {args.nanogpt}: expected a karpathy/nanoGPT checkout with model.py in it")
    shape, new_tokens, probe_mb = (TINY, 8, 64) if args.tiny else (GPT2_124M, NEW_TOKENS, 640)
    nanogpt_tokens = [8, 16] if args.tiny else args.nanogpt_tokens  # within the tiny model's 128 positions
    results = run(args.batch, args.modes, args.repeats, args.nanogpt, nanogpt_tokens, shape, new_tokens, probe_mb)
    return report(results, " ".join([p.prog, *argv]))


def main() -> None:
    print(benchmark(sys.argv[1:]))


if __name__ == "__main__":
    main()
