"""B1: greedy generation, hf_nanogpt against GPT2LMHeadModel (and llama.cpp, nanoGPT's generate) on the same weights.

    python -m benchmarks.generation [--batch 1 8] [--modes eager static-compile] [--dtypes float32 bfloat16]
                                    [--llama-cpp BUILD] [--nanogpt PATH]

GPT-2 124M shape, random weights converted by hf_nanogpt's GPT-2 conversion; CPU; a 32-token prompt and 128
new tokens (no end-of-text token, eos_token_id=None, so every run makes them all, with no logits
processor: what llama-bench times too). The tokens of the two models are
compared in the run. --llama-cpp (a llama.cpp build folder) adds, at batch 1, llama.cpp's `llama-bench`
decoding on our `export gguf` of the same weights (f32, or bf16 for the bfloat16 rows) as a side of the same
alternating loop, and its greedy text (`llama-simple`) against ours. Prints Markdown.
"""

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, StaticCache

from hf_nanogpt import NanoGPTForCausalLM
from hf_nanogpt.conversion.gguf import export_gguf
from hf_nanogpt.conversion.nanogpt import convert_nanogpt
from hf_nanogpt.cpu_decode import attach_cpu_decode
from hf_nanogpt.modeling_nanogpt import CACHE_NAME
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

from .common import (
    GPT2_124M,
    TINY,
    alternate,
    gpt2_pair,
    markdown_table,
    parameter_bytes,
    ratio_cell,
)
from .llama_cpp_parity import PROMPT, ROOT, TEXT, tokens_matched
from .llama_cpp_parity import run as run_llama_tool

PROMPT_TOKENS = 32
NEW_TOKENS = 128
MODES = ("eager", "static-compile")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GGUF_TYPES = {"float32": "f32", "bfloat16": "bf16"}  # llama.cpp's file for each of our dtypes
FIXTURES = ("A_char_nobias", "B_bpe_bias")  # real nanoGPT checkpoints: bfloat16's accuracy is measured on them


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
            eos_token_id=None,
            do_sample=False,
            pad_token_id=0,
            **extra,
        )


def compiled(model, backend: str = "inductor"):
    """The model with its forward compiled as generate() uses it on the CPU (generate does not compile
    there by itself): full graph, static shapes (one graph for the prefill, one for a decode step)."""
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False, backend=backend)
    return model


def llama_bench(bin_dir: Path, gguf: Path, new_tokens: int) -> float:
    """llama.cpp's decoding tokens/s (`llama-bench` tg: new_tokens one at a time, batch 1, our thread count)."""
    out, _ = run_llama_tool(
        bin_dir / "llama-bench",
        "-m",
        str(gguf),
        "-p",
        "0",
        "-n",
        str(new_tokens),
        "-r",
        "1",
        "-t",
        str(torch.get_num_threads()),
        "-o",
        "json",
    )
    return json.loads(out)[0]["avg_ts"]


def compare(
    gpt2,
    ours,
    batch: int,
    mode: str,
    repeats: int,
    new_tokens: int = NEW_TOKENS,
    probe_mb: int = 0,
    llama: tuple[Path, Path] | None = None,
) -> dict:
    """Tokens/s of both models; with probe_mb, the read-bandwidth probe takes turns with them too, and with
    llama (bin folder, GGUF file), llama.cpp's decoding."""
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
    llama_tok_s = []
    if llama is not None:
        sides["llama.cpp"] = lambda: llama_tok_s.append(llama_bench(*llama, new_tokens))
    dtype = next(name for name, d in DTYPES.items() if d == ours.dtype)
    t = alternate(sides, repeats, desc=f"B1 batch {batch}, {mode}, {dtype}")
    same = torch.equal(tokens["gpt2"], tokens["ours"])  # the last timed runs' tokens
    decode_steps = new_tokens - 1  # the first new token comes out of the prefill
    return {
        "batch": batch,
        "mode": mode,
        "dtype": dtype,
        "same_tokens": same,
        "gpt2_tok_s": batch * new_tokens / t.median("gpt2"),
        "ours_tok_s": batch * new_tokens / t.median("ours"),
        "speedup": t.median("gpt2") / t.median("ours"),
        "gpt2_decode_steps_s": decode_steps / (t.median("gpt2") - t.median("gpt2 prefill")),
        "ours_decode_steps_s": decode_steps / (t.median("ours") - t.median("ours prefill")),
        "read_bandwidth": probe_mb * 2**20 / t.median("read probe") if probe_mb else None,
        "llama_tok_s": statistics.median(llama_tok_s[1:]) if llama_tok_s else None,  # the first is the warm-up
        "repeats": repeats,
    }


def export_for_llama(folder: Path, dtype: str) -> Path:
    """A model folder holding the GPT-2 tokenizer (llama.cpp needs one inside the file) as a GGUF of `dtype`."""
    gguf = folder.with_suffix(f".{GGUF_TYPES[dtype]}.gguf")
    export_gguf(folder, gguf, outtype=GGUF_TYPES[dtype], overwrite=True, log=lambda *a: None)
    return gguf


def llama_greedy_match(bin_dir: Path, gguf: Path, ours, new_tokens: int) -> str:
    """How many of our greedy tokens from PROMPT llama.cpp's `llama-simple` reproduces, as 'k/n'."""
    tokenizer = gpt2_tokenizer()
    ids = torch.tensor([tokenizer(PROMPT).input_ids])
    out = greedy(ours, ids, new_tokens, "eager")
    new = out[0, ids.shape[1] :].tolist()
    ours_text = tokenizer.decode(out[0], clean_up_tokenization_spaces=False)
    theirs = run_llama_tool(bin_dir / "llama-simple", "-m", str(gguf), "-n", str(new_tokens), PROMPT)[0].removesuffix(
        "\n"
    )
    return f"{tokens_matched(tokenizer, PROMPT, new, ours_text, theirs)}/{len(new)}"


def bfloat16_accuracy(folder: Path, text: str, new_tokens: int = 100) -> dict:
    """What bfloat16 weights and activations cost a trained model: perplexity over `text` (block-size windows),
    the largest logit difference, and how many greedy tokens from the text's first 8 stay those of float32."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    exact = attach_cpu_decode(NanoGPTForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())
    half = copy.deepcopy(exact).to(torch.bfloat16)
    block = exact.config.block_size
    ids = torch.tensor(tokenizer(text).input_ids)
    windows = ids[: len(ids) // block * block].view(-1, block)
    result = {"model": folder.name, "windows": f"{len(windows)} x {block}"}
    with torch.inference_mode():
        for name, model in (("float32", exact), ("bfloat16", half)):
            out = model(windows, labels=windows)
            result[f"ppl_{name}"], result[f"logits_{name}"] = out.loss.exp().item(), out.logits.float()
    result["max_logit_diff"] = (result.pop("logits_float32") - result.pop("logits_bfloat16")).abs().max().item()
    prompt = ids[None, :8]
    n = min(new_tokens, block - 8)
    tokens = [greedy(model, prompt, n, "eager")[0, 8:] for model in (exact, half)]
    result["greedy"] = f"{next((i for i, (a, b) in enumerate(zip(*tokens)) if a != b), n)}/{n}"
    return result


def load_nanogpt(nanogpt_dir: Path, ours: NanoGPTForCausalLM):
    """nanoGPT's GPT from a checkout's model.py, holding `ours`'s weights (not part of this package)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = ours.config
    config = module.GPTConfig(
        block_size=c.block_size,
        vocab_size=c.vocab_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=0.0,
        bias=c.bias,
    )
    model = module.GPT(config).eval()
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or any(not key.endswith(".attn.bias") for key in missing):
        raise RuntimeError(
            f"nanoGPT's GPT does not take hf_nanogpt's keys: missing {missing}, unexpected {unexpected}"
        )
    return model


def compare_nanogpt(nanogpt_dir: Path, ours, new_tokens: int, repeats: int) -> dict:
    """Batch 1 greedy: nanoGPT's generate (no KV cache, recomputes the window every token; top_k=1 is its
    greedy) against ours with its default cache. nanoGPT's GELU is the exact one, so ours is rebuilt
    with activation "gelu" on the same weights: the tokens then agree."""
    config = ours.config.__class__(**{**ours.config.to_dict(), "activation_function": "gelu"})
    exact = attach_cpu_decode(NanoGPTForCausalLM(config).eval())
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


def run(
    batches=(1, 8),
    modes=MODES,
    repeats: int = 5,
    nanogpt: Path | None = None,
    nanogpt_tokens=(128, 512),
    shape: dict = GPT2_124M,
    new_tokens: int = NEW_TOKENS,
    probe_mb: int = 640,
    dtypes=("float32",),
    llama_cpp: Path | None = None,
    compile_backend: str = "inductor",
) -> dict:
    results = {"rows": [], "nanogpt": [], "llama_tokens": {}, "new_tokens": new_tokens}
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        gpt2_f32, ours_f32 = gpt2_pair(shape, Path(tmp) / "gpt2")
        attach_cpu_decode(ours_f32)  # as `hf-nanogpt generate` decodes (F.linear under compile)
        if llama_cpp is not None:  # saved once, exported in each dtype
            save_model_folder(ours_f32, Path(tmp) / "ours", gpt2_tokenizer(), overwrite=True)
        for dtype in dtypes:
            llama = None
            if llama_cpp is not None:
                llama = (llama_cpp / "bin", export_for_llama(Path(tmp) / "ours", dtype))
            for mode in modes:
                # copies in the dtype (module.to works in place), compiled afresh for the mode
                gpt2, ours = (copy.deepcopy(m).to(DTYPES[dtype]) for m in (gpt2_f32, ours_f32))
                if llama is not None and dtype not in results["llama_tokens"]:
                    results["llama_tokens"][dtype] = llama_greedy_match(*llama, ours, min(new_tokens, 100))
                if mode == "static-compile":
                    torch._dynamo.reset()
                    gpt2, ours = compiled(gpt2, compile_backend), compiled(ours, compile_backend)
                for batch in batches:
                    probe = probe_mb if batch == 1 else 0  # the bandwidth table is for batch 1
                    row = compare(gpt2, ours, batch, mode, repeats, new_tokens, probe, llama if batch == 1 else None)
                    results["rows"].append({**row, "parameter_bytes": parameter_bytes(ours)})
                del gpt2, ours
    if "bfloat16" in dtypes:
        results["bfloat16_accuracy"] = []
        with tempfile.TemporaryDirectory(prefix="bench-bf16-") as tmp:
            for name in FIXTURES:
                folder = Path(tmp) / name
                convert_nanogpt(ROOT / "tests" / "fixtures" / "nanogpt" / name, folder, log=lambda *a: None)
                results["bfloat16_accuracy"].append(bfloat16_accuracy(folder, TEXT.read_text()))
    if nanogpt is not None:
        for n in nanogpt_tokens:
            results["nanogpt"].append(compare_nanogpt(nanogpt, ours_f32, n, repeats))
    return results


def report(results: dict, command: str) -> str:
    rows = [
        [
            r["batch"],
            r["dtype"],
            r["mode"],
            f"{r['gpt2_tok_s']:.1f}",
            f"{r['ours_tok_s']:.1f}",
            ratio_cell(r["speedup"]),
            "yes" if r["same_tokens"] else "**no**",
            r["repeats"],
        ]
        for r in results["rows"]
    ]
    out = [
        markdown_table(
            [
                "batch",
                "dtype",
                "cache and compile",
                "GPT2LMHeadModel tokens/s",
                "hf_nanogpt tokens/s",
                "ours/theirs (tokens/s)",
                "same greedy tokens",
                "timed runs",
            ],
            rows,
        )
    ]
    llama_rows = [
        [
            r["dtype"],
            r["mode"],
            f"{r['ours_decode_steps_s']:.1f}",
            f"{r['llama_tok_s']:.1f}",
            ratio_cell(r["ours_decode_steps_s"] / r["llama_tok_s"]),
            results["llama_tokens"][r["dtype"]],
            r["repeats"],
        ]
        for r in results["rows"]
        if r["llama_tok_s"] is not None
    ]
    if llama_rows:
        out.append(
            f"\nAgainst llama.cpp at batch 1, decoding only (llama-bench's tg{results['new_tokens']}, one token "
            f"at a time; "
            f"ours: decode steps/s with the prefill timed apart), on our `export gguf` of the same weights (f32 for "
            f"float32, bf16 for bfloat16), same thread count, llama-bench taking turns with the models in the same "
            f"loop. Greedy tokens: llama-simple's continuation of {PROMPT!r} against ours.\n"
        )
        out.append(
            markdown_table(
                [
                    "dtype",
                    "cache and compile",
                    "hf_nanogpt decode tokens/s",
                    "llama.cpp tokens/s",
                    "ours/llama.cpp",
                    "greedy tokens equal",
                    "timed runs",
                ],
                llama_rows,
            )
        )
    bw_rows = []
    for r in results["rows"]:
        if r["read_bandwidth"] is None:
            continue
        probe = r["read_bandwidth"] / 1e9
        sides = [("GPT2LMHeadModel", r["gpt2_decode_steps_s"]), ("hf_nanogpt", r["ours_decode_steps_s"])]
        if r["llama_tok_s"] is not None:
            sides.append(("llama.cpp", r["llama_tok_s"]))
        for name, steps in sides:
            bw = r["parameter_bytes"] * steps / 1e9
            bw_rows.append(
                [
                    name,
                    r["dtype"],
                    r["mode"],
                    f"{1e3 / steps:.1f}",
                    f"{bw:.1f}",
                    f"{probe:.1f}",
                    f"{100 * bw / probe:.0f}%",
                ]
            )
    if bw_rows:
        out.append(
            "\nDecoding at batch 1 reads every weight once per token: effective weight bandwidth = parameter bytes "
            "(float32 0.497 GB, bfloat16 half) x decode steps/s (the prefill timed apart and left out). The read "
            "probe, torch.sum over a float32 tensor far larger than the caches, takes turns with the models in the "
            "same loop.\n"
        )
        out.append(
            markdown_table(
                [
                    "model",
                    "dtype",
                    "cache and compile",
                    "ms per decode step",
                    "effective GB/s",
                    "read probe GB/s",
                    "of the read probe",
                ],
                bw_rows,
            )
        )
    if results.get("bfloat16_accuracy"):
        rows = [
            [
                r["model"],
                r["windows"],
                f"{r['ppl_float32']:.4f}",
                f"{r['ppl_bfloat16']:.4f}",
                f"{r['ppl_bfloat16'] / r['ppl_float32'] - 1:+.1e}",
                f"{r['max_logit_diff']:.3f}",
                r["greedy"],
            ]
            for r in results["bfloat16_accuracy"]
        ]
        out.append(
            "\nWhat bfloat16 costs (`from_pretrained(..., dtype=torch.bfloat16)`: weights and activations) on "
            "the real nanoGPT checkpoints of tests/fixtures, over tests/fixtures/shakespeare_char/input_head.txt; "
            "greedy tokens: how many from the start stay float32's.\n"
        )
        out.append(
            markdown_table(
                [
                    "checkpoint",
                    "windows",
                    "float32 perplexity",
                    "bfloat16 perplexity",
                    "relative change",
                    "max logit difference",
                    "greedy tokens equal",
                ],
                rows,
            )
        )
    if results["nanogpt"]:
        rows = [
            [
                1,
                r["new_tokens"],
                f"{r['nanogpt_tok_s']:.1f}",
                f"{r['ours_tok_s']:.1f}",
                ratio_cell(r["speedup"]),
                "yes" if r["same_tokens"] else "**no**",
                r["repeats"],
            ]
            for r in results["nanogpt"]
        ]
        out.append(
            "\nAgainst nanoGPT's `GPT.generate` (no KV cache; `top_k=1` is its greedy), same weights, "
            "exact GELU on both sides:\n"
        )
        out.append(
            markdown_table(
                [
                    "batch",
                    "new tokens",
                    "nanoGPT tokens/s",
                    "hf_nanogpt tokens/s",
                    "ours/theirs (tokens/s)",
                    "same greedy tokens",
                    "timed runs",
                ],
                rows,
            )
        )
    out.append(f"\nReproduce: `{command}`")
    return "\n".join(out)


def benchmark(argv: list[str]) -> str:
    """Parse `argv`, run, and return the Markdown report (with the command that reproduces it)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.generation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument(
        "--llama-cpp",
        type=Path,
        help="a llama.cpp build folder (bin/llama-bench, bin/llama-simple): adds llama.cpp's decoding at batch 1",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nanogpt", type=Path, help="a karpathy/nanoGPT checkout: adds the rows against its generate")
    p.add_argument("--nanogpt-tokens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--tiny", action="store_true", help="a tiny model, for checking that the code runs")
    args = p.parse_args(argv)
    if args.nanogpt is not None and not (args.nanogpt / "model.py").is_file():
        p.error(f"--nanogpt {args.nanogpt}: expected a karpathy/nanoGPT checkout with model.py in it")
    if args.llama_cpp is not None and not (args.llama_cpp / "bin" / "llama-bench").is_file():
        p.error(f"--llama-cpp {args.llama_cpp}: expected a llama.cpp build folder with bin/llama-bench in it")
    shape, new_tokens, probe_mb = (TINY, 8, 64) if args.tiny else (GPT2_124M, NEW_TOKENS, 640)
    nanogpt_tokens = [8, 16] if args.tiny else args.nanogpt_tokens  # within the tiny model's 128 positions
    # --tiny measures nothing: aot_eager traces the same graphs as inductor without generating code
    # (minutes on 2 cores)
    results = run(
        args.batch,
        args.modes,
        args.repeats,
        args.nanogpt,
        nanogpt_tokens,
        shape,
        new_tokens,
        probe_mb,
        args.dtypes,
        args.llama_cpp,
        "aot_eager" if args.tiny else "inductor",
    )
    return report(results, " ".join([p.prog, *argv]))


def main() -> None:
    print(benchmark(sys.argv[1:]))


if __name__ == "__main__":
    main()
