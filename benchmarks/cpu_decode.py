"""Does hf_nanogpt.cpu_decode earn its place on this CPU? Greedy generation with and without it, same model.

    python -m benchmarks.cpu_decode [--batch 1 8] [--dtypes float32 bfloat16] [--new-tokens 64] [--repeats 5]

GPT-2 124M shape, random weights, eager with generate's default cache, a 32-token prompt. The two sides take
turns on the same model in one process (attached, then its Linear modules set back to nn.Linear); the warm-up
round includes the first-use timing of each weight shape (the prompt's rows too, up to FEW_ROWS). Prints
Markdown: tokens/s, the ratio, the products kept other than F.linear, and whether the greedy tokens are equal.
"""

import argparse
import sys

import torch
from torch import nn

from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.cpu_decode import DECODE_CHOICE, DecodeLinear, attach_cpu_decode

from .common import alternate, machine, markdown_table, ratio_cell
from .generation import DTYPES, PROMPT_TOKENS, greedy


def detach(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if type(module) is DecodeLinear:
            module.__class__ = nn.Linear
    return model


def run(batches, dtypes, new_tokens: int, repeats: int) -> list[list]:
    torch.manual_seed(0)
    config = NanoGPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True)
    base = NanoGPTForCausalLM(config).eval()
    rows = []
    for dtype in dtypes:
        model = base.to(DTYPES[dtype])
        for batch in batches:
            prompt = torch.randint(
                config.vocab_size, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(batch)
            )
            tokens = {}

            def side(name, switch):
                def run_once():
                    tokens[name] = greedy(switch(model), prompt, new_tokens, "eager")

                return run_once

            DECODE_CHOICE.clear()  # the warm-up times each shape afresh
            t = alternate(
                {"F.linear": side("F.linear", detach), "cpu_decode": side("cpu_decode", attach_cpu_decode)},
                repeats,
                desc=f"cpu_decode batch {batch}, {dtype}",
            )
            kept = [
                f"{m} x ({out}, {inp}): {name}"
                for (m, out, inp, *_), name in DECODE_CHOICE.items()
                if name != "linear"
            ]
            rows.append(
                [
                    batch,
                    dtype,
                    f"{batch * new_tokens / t.median('F.linear'):.1f}",
                    f"{batch * new_tokens / t.median('cpu_decode'):.1f}",
                    ratio_cell(t.median("F.linear") / t.median("cpu_decode")),
                    "yes" if torch.equal(tokens["F.linear"], tokens["cpu_decode"]) else "**no**",
                    "; ".join(kept) or "F.linear for all",
                    repeats,
                ]
            )
        detach(model)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    info = machine()
    rows = run(args.batch, args.dtypes, args.new_tokens, args.repeats)
    print("; ".join(f"{k}: {v}" for k, v in info.items()) + ".\n")
    print(
        markdown_table(
            [
                "batch",
                "dtype",
                "F.linear tokens/s",
                "cpu_decode tokens/s",
                "cpu_decode/F.linear (tokens/s)",
                "same greedy tokens",
                "products other than F.linear kept (rows x weight shape)",
                "timed runs",
            ],
            rows,
        )
    )
    print(f"\nReproduce: `{' '.join([p.prog, *(argv if argv is not None else sys.argv[1:])])}`")


if __name__ == "__main__":
    main()
