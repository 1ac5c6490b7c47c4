# On a GPU machine with no network and no .venv, nothing to install: PYTHONPATH=. python3 -m benchmarks.gpu_check
"""B4, `make gpu-check`: what one GPU does with GPT-2 124M, in one report (a Markdown section for BENCHMARKS.md).

    python -m benchmarks.gpu_check [--dry-run] [--out FILE] [--only training decode parity]

With CUDA: GPT-2 124M's shape as nanoGPT trains it (n_layer 12, n_head 12, n_embd 768, block_size 1024,
vocab_size 50304, bias False), random weights. Without CUDA, or with --dry-run: the same code on tiny shapes
on the CPU, a check that it runs (the test suite runs it); its figures mean nothing. Sections:

- training: bf16 autocast steps with fused AdamW (nanoGPT's settings, grad clip 1.0), nanoGPT's micro-batch
  12 x 1024 and its 5 micro-steps per GPU per optimizer step (config/train_gpt2.py's 40 over 8 GPUs), for
  each attention path (sdpa's own dispatch; sdpa held to its flash kernel; flash_attention_2 where the
  flash_attn package imports) eager and under `torch.compile(model)` as nanoGPT compiles it (the model; the
  backward through AOTAutograd; the optimizer step eager). Median step time after warm-up steps (the first
  compiles), tokens/s, and MFU: hf_nanogpt.training.measure's flops_per_token (nanoGPT's 6N + attention) x
  tokens/s over the device's bf16 peak (hf_nanogpt.training.measure.default_peak_flops: 989 TFLOP/s on the
  H100 and H200; nanoGPT's 312 is the A100's).
- decode: greedy `generate` with `cache_implementation="static"`, bf16, at batch 1 and 32, hf_nanogpt
  against GPT2LMHeadModel holding the same weights (our own export's state-dict conversion). generate
  compiles the decode step itself on CUDA (transformers' CompileConfig: inductor, CUDA graphs) and keeps
  one static cache for the calls of the same shape; the same CompileConfig, flagged for every device,
  compiles it in the dry run on the CPU.
- parity: logits of the same model and input on the device (float32 and bfloat16 weights) against the CPU
  in float32: the largest difference and how often the greedy next token agrees (in the dry run, the CPU
  in bfloat16 against the CPU in float32).

A configuration that fails gets its error in its row and the rest still run; the exit status is 1 if any
row failed. The total on an H100 or H200 is meant to stay under 5 minutes (compilation included; the
report says how long each section took).
"""

import argparse
import contextlib
import copy
import datetime
import gc
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2LMHeadModel
from transformers.generation import CompileConfig

from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.conversion.common import atomic_output_file
from hf_nanogpt.conversion.gpt2 import gpt2_config_from_nanogpt, to_gpt2_state_dict
from hf_nanogpt.training.measure import default_peak_flops, flops_per_token

from .common import alternate, machine, markdown_table, ratio_cell
from .training import ADAMW

MFU_GOAL = 0.45  # at GPT-2 124M on one GPU (issue 16)
SECTIONS = ("training", "decode", "parity")


@dataclass(frozen=True)
class Plan:
    """The shapes and step counts of one run: GPT-2 124M on a GPU, tiny ones on the CPU; the code is the same."""

    device: torch.device
    model: dict  # NanoGPTConfig fields
    micro_batch: int
    micro_steps: int  # per optimizer step (gradient accumulation)
    warmup_steps: int  # the first one compiles
    timed_steps: int
    prompt_tokens: int
    new_tokens: int
    decode_batches: tuple[int, ...]
    decode_repeats: int
    parity_batch: int
    compile_backend: str = "inductor"

    @property
    def dry_run(self) -> bool:
        return self.device.type == "cpu"


GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, bias=False, dropout=0.0)
GPU_PLAN = dict(
    model=GPT2_124M,
    micro_batch=12,
    micro_steps=5,
    warmup_steps=2,
    timed_steps=10,
    prompt_tokens=32,
    new_tokens=128,
    decode_batches=(1, 32),
    decode_repeats=3,
    parity_batch=2,
)
DRY_RUN_PLAN = dict(
    model=dict(GPT2_124M, n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=128),
    micro_batch=2,
    micro_steps=2,
    warmup_steps=1,
    timed_steps=2,
    prompt_tokens=8,
    new_tokens=8,
    decode_batches=(1, 32),
    decode_repeats=1,
    parity_batch=2,
)


def flash_attn_missing() -> str | None:
    """Why the flash_attention_2 rows cannot run (None: flash_attn imports)."""
    try:
        importlib.import_module("flash_attn")
    except Exception as error:  # an ImportError, or a build that does not match this torch
        return f"not installed (import flash_attn: {one_line(error)})"
    return None


def attention_paths(device: torch.device) -> list[tuple[str, str, Callable, str | None]]:
    """(row name, attn_implementation, context around every step, why it is skipped or None)."""
    on_cpu = "skipped: CPU" if device.type == "cpu" else None
    return [
        ("sdpa", "sdpa", contextlib.nullcontext, None),
        ("sdpa, flash kernel forced", "sdpa", lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION), on_cpu),
        ("flash_attention_2", "flash_attention_2", contextlib.nullcontext, flash_attn_missing() or on_cpu),
    ]


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text[:limit] + ("..." if len(text) > limit else "")


def attempt(fn: Callable[..., dict], *args) -> dict:
    """fn's row, or {"error": ...}: one failing configuration is reported in its row and the others still run."""
    try:
        return fn(*args)
    except Exception as error:  # any failure of this configuration (out of memory, a kernel, a compiler error)
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {one_line(error)}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def error_cells(row: dict, width: int) -> list[str]:
    """The cells of a row that did not run: the reason in the first, the rest empty."""
    text = f"**failed**: {row['error']}" if "error" in row else row["skipped"]
    return [text.replace("|", "/"), *[""] * (width - 1)]


# ---------------------------------------------------------------------------------------------------
# training


def training_row(
    base: NanoGPTForCausalLM, plan: Plan, attention: str, context: Callable, compiled: bool, peak: float
) -> dict:
    """Median bf16 training step of a copy of `base`: `micro_steps` micro-batches, clipping, fused AdamW."""
    if compiled:
        torch._dynamo.reset()  # compiled afresh under this row's attention and context
    model = copy.deepcopy(base).to(plan.device).train()
    model.set_attn_implementation(attention)
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW, fused=True)
    forward = torch.compile(model, backend=plan.compile_backend) if compiled else model
    block, vocab = model.config.block_size, model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    windows = [
        torch.randint(vocab, (plan.micro_batch, block + 1), generator=generator).to(plan.device)
        for _ in range(plan.micro_steps)
    ]
    losses = []

    def step():
        with context():
            for window in windows:
                with torch.autocast(plan.device.type, dtype=torch.bfloat16):
                    loss = forward(window[:, :-1], shift_labels=window[:, 1:]).loss
                (loss / plan.micro_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # waits for the step's kernels, queued before it

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    timings = alternate({"step": step}, plan.timed_steps, plan.warmup_steps - 1, f"training: {attention}")
    seconds = timings.median("step")
    tokens = plan.micro_batch * block * plan.micro_steps
    return {
        "step_s": seconds,
        "first_s": first,
        "tokens_s": tokens / seconds,
        "loss": losses[-1],
        "mfu": flops_per_token(model, block) * tokens / seconds / peak,
    }


def training_section(base: NanoGPTForCausalLM, plan: Plan, peak: float) -> tuple[str, list[dict]]:
    rows = []
    for name, attention, context, skipped in attention_paths(plan.device):
        for compiled in (False, True):
            row = {"attention": name, "mode": "torch.compile" if compiled else "eager"}
            if skipped:
                row["skipped"] = skipped
            else:
                row |= attempt(training_row, base, plan, attention, context, compiled, peak)
            rows.append(row)
    cells = []
    for r in rows:
        if "step_s" in r:
            cells.append(
                [
                    r["attention"],
                    r["mode"],
                    f"{1e3 * r['step_s']:.1f}",
                    f"{r['first_s']:.1f}",
                    f"{r['tokens_s']:,.0f}",
                    f"{100 * r['mfu']:.1f}%",
                    f"{r['loss']:.3f}",
                ]
            )
        else:
            cells.append([r["attention"], r["mode"], *error_cells(r, 5)])
    tokens = plan.micro_batch * plan.model["block_size"] * plan.micro_steps
    text = (
        f"bf16 autocast (float32 weights), fused AdamW (lr {ADAMW['lr']}, betas {ADAMW['betas']}, weight decay "
        f"{ADAMW['weight_decay']}), grad clip 1.0; micro-batch {plan.micro_batch} x {plan.model['block_size']}, "
        f"{plan.micro_steps} micro-steps per optimizer step ({tokens:,} tokens); compiled: `torch.compile(model)` "
        f"as nanoGPT does (backend {plan.compile_backend}); warm-up steps: {plan.warmup_steps} (the first "
        f"compiles), then the median of {plan.timed_steps} timed steps. MFU = flops_per_token x tokens/s / peak."
        f"\n\n"
        + markdown_table(
            ["attention", "compile", "ms per step (median)", "first step s", "tokens/s", "MFU", "last loss"], cells
        )
    )
    return text, rows


# ---------------------------------------------------------------------------------------------------
# decode


def as_gpt2(model: NanoGPTForCausalLM) -> GPT2LMHeadModel:
    """transformers' GPT2LMHeadModel holding `model`'s weights (`export gpt2`'s state-dict conversion)."""
    config = gpt2_config_from_nanogpt(model.config)
    gpt2 = GPT2LMHeadModel(config)
    gpt2.load_state_dict(to_gpt2_state_dict(iter(model.state_dict().items()), config), strict=True)
    return gpt2


def static_compile_config(backend: str) -> CompileConfig:
    """generate's own compile of the decode step (CompileConfig's defaults, what it uses on CUDA by itself),
    flagged to run on any device: transformers' switch for compiling on the CPU, which the dry run needs.
    Inductor's modes mean nothing to another backend, which gets none."""
    config = CompileConfig(backend=backend) if backend == "inductor" else CompileConfig(backend=backend, mode=None)
    config._compile_all_devices = True
    return config


def greedy_static(model, prompt: torch.Tensor, new_tokens: int, compile_config: CompileConfig) -> torch.Tensor:
    """Greedy tokens through a static cache that generate keeps between calls of the same shape (a new cache
    every call, as benchmarks.generation.greedy passes, would make CUDA graphs record again each time)."""
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            eos_token_id=None,
            do_sample=False,
            pad_token_id=0,
            cache_implementation="static",
            compile_config=compile_config,
        )
    return out.cpu()  # waits for the device


def decode_row(models: dict, plan: Plan, batch: int) -> dict:
    vocab = plan.model["vocab_size"]
    prompt = torch.randint(vocab, (batch, plan.prompt_tokens), generator=torch.Generator().manual_seed(batch))
    prompt = prompt.to(plan.device)
    config, tokens = static_compile_config(plan.compile_backend), {}

    def side(name):
        def run():
            tokens[name] = greedy_static(models[name], prompt, plan.new_tokens, config)

        return run

    t = alternate({name: side(name) for name in models}, plan.decode_repeats, 1, f"decode: batch {batch}")
    new = [tokens[name][:, plan.prompt_tokens :] for name in ("gpt2", "ours")]
    differ = (new[0] != new[1]).any(0).nonzero()
    return {
        "batch": batch,
        "gpt2_tok_s": batch * plan.new_tokens / t.median("gpt2"),
        "ours_tok_s": batch * plan.new_tokens / t.median("ours"),
        "ratio": t.median("gpt2") / t.median("ours"),
        "same": "yes" if len(differ) == 0 else f"**no** (from new token {differ[0].item() + 1})",
    }


def decode_models(base: NanoGPTForCausalLM, plan: Plan) -> dict:
    pair = {"gpt2": as_gpt2(base), "ours": copy.deepcopy(base)}
    return {name: model.to(plan.device, torch.bfloat16).eval() for name, model in pair.items()}


def decode_section(base: NanoGPTForCausalLM, plan: Plan) -> tuple[str, list[dict]]:
    torch._dynamo.reset()
    models = attempt(decode_models, base, plan)
    if "error" in models:
        rows = [{"batch": batch, **models} for batch in plan.decode_batches]
    else:
        rows = [{"batch": batch} | attempt(decode_row, models, plan, batch) for batch in plan.decode_batches]
    del models
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["batch"], *error_cells(r, 4)])
        else:
            cells.append(
                [r["batch"], f"{r['gpt2_tok_s']:,.1f}", f"{r['ours_tok_s']:,.1f}", ratio_cell(r["ratio"]), r["same"]]
            )
    compiler = (
        "inductor, mode reduce-overhead: CUDA graphs on a GPU"
        if plan.compile_backend == "inductor"
        else f"backend {plan.compile_backend}"
    )
    text = (
        f'Greedy `generate`, bf16 weights, `cache_implementation="static"`, the decode step compiled by generate '
        f"itself (transformers' CompileConfig: {compiler}); a random prompt of {plan.prompt_tokens} tokens and "
        f"{plan.new_tokens} new tokens (no end-of-text stop), "
        f"tokens/s = batch x new tokens / median time per run (the prefill included; timed runs: "
        f"{plan.decode_repeats}, after a warm-up run that compiles), the two models taking turns.\n\n"
        + markdown_table(
            [
                "batch",
                "GPT2LMHeadModel tokens/s",
                "hf_nanogpt tokens/s",
                "ours/theirs (tokens/s)",
                "same greedy tokens",
            ],
            cells,
        )
    )
    return text, rows


# ---------------------------------------------------------------------------------------------------
# parity


def parity_row(
    base: NanoGPTForCausalLM, ids: torch.Tensor, reference: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> dict:
    model = copy.deepcopy(base).to(device, dtype).eval()
    with torch.inference_mode():
        logits = model(ids.to(device)).logits.float().cpu()
    return {
        "max_diff": (logits - reference).abs().max().item(),
        "agree": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }


def parity_section(base: NanoGPTForCausalLM, plan: Plan) -> tuple[str, list[dict]]:
    block, vocab = plan.model["block_size"], plan.model["vocab_size"]
    ids = torch.randint(vocab, (plan.parity_batch, block), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = base.eval()(ids).logits.float()
    dtypes = (torch.bfloat16,) if plan.dry_run else (torch.float32, torch.bfloat16)  # CPU float32 is the reference
    rows = [
        {"dtype": str(dtype).removeprefix("torch.")} | attempt(parity_row, base, ids, reference, plan.device, dtype)
        for dtype in dtypes
    ]
    where = "CPU" if plan.dry_run else torch.cuda.get_device_name(plan.device)
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([where, r["dtype"], *error_cells(r, 2)])
        else:
            cells.append([where, r["dtype"], f"{r['max_diff']:.2e}", f"{100 * r['agree']:.1f}%"])
    text = (
        f"The same weights and input ({plan.parity_batch} x {block} random tokens); reference: the CPU in "
        f"float32, whose largest |logit| is {reference.abs().max().item():.3f}. Greedy next token: the share of "
        f"positions whose argmax agrees with the reference's (random weights give flat logits, so rounding "
        f"flips near-ties).\n\n"
        + markdown_table(["device", "weights", "max abs logit difference", "greedy next token agrees"], cells)
    )
    return text, rows


# ---------------------------------------------------------------------------------------------------
# the report


def device_lines(plan: Plan, peak: float, peak_source: str, n_params: int) -> str:
    info = machine()
    if plan.dry_run:
        where = f"the CPU, a dry run (no CUDA, or --dry-run; tiny shapes): {info['CPU']}, cores {info['cores']}"
    else:
        props = torch.cuda.get_device_properties(plan.device)
        where = (
            f"{props.name} (compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
        )
    shape = ", ".join(f"{k} {v}" for k, v in plan.model.items() if k != "dropout")
    return (
        f"Measured {datetime.date.today().isoformat()} on {where}. torch {info['torch']}, transformers "
        f"{info['transformers']}, hf_nanogpt {info['hf_nanogpt']}, Python {info['Python']}.\n"
        f"Model: hf_nanogpt NanoGPTForCausalLM, {shape}, random weights, {n_params / 1e6:.2f}M parameters. "
        f"Peak for MFU: {peak / 1e12:.1f} TFLOP/s ({peak_source})."
    )


def summary(plan: Plan, training: list[dict], failed: int, peak_source: str) -> str:
    ran = "every row ran" if failed == 0 else f"**{failed} rows failed**"
    if plan.dry_run:
        return (
            f"**Summary**: a dry run on the CPU with tiny shapes: it checks that the code runs ({ran}); its "
            f"figures mean nothing. The MFU goal (>= {100 * MFU_GOAL:.0f}% at GPT-2 124M) is judged on a GPU."
        )
    measured = [r for r in training if "mfu" in r]
    if not measured:
        return f"**Summary**: no training row ran, so the MFU goal (>= {100 * MFU_GOAL:.0f}%) is not judged; {ran}."
    best = max(measured, key=lambda r: r["mfu"])
    verdict = "**met**" if best["mfu"] >= MFU_GOAL else "**not met**"
    return (
        f"**Summary**: MFU goal (>= {100 * MFU_GOAL:.0f}% at GPT-2 124M, against {peak_source}): {verdict}: best "
        f"{100 * best['mfu']:.1f}% ({best['attention']}, {best['mode']}, {best['tokens_s']:,.0f} tokens/s); {ran}."
    )


def run(plan: Plan, only=SECTIONS, command: str = "python -m benchmarks.gpu_check") -> tuple[str, int]:
    """The report (ending with `command`, which reproduces it) and the number of rows that failed."""
    started = time.perf_counter()
    torch.manual_seed(0)
    base = NanoGPTForCausalLM(NanoGPTConfig(**plan.model)).eval()  # float32 on the CPU; every row copies it
    peak, peak_source = default_peak_flops(plan.device, "bfloat16")
    parts = [
        f"## B4: GPU check ({'CPU dry run' if plan.dry_run else 'one GPU'})\n",
        device_lines(plan, peak, peak_source, sum(p.numel() for p in base.parameters())),
    ]
    sections = {
        "training": (lambda: training_section(base, plan, peak), "Training"),
        "decode": (lambda: decode_section(base, plan), "Decode"),
        "parity": (lambda: parity_section(base, plan), "Parity: logits against the CPU in float32"),
    }
    results = {}
    for name in only:
        section, title = sections[name]
        start = time.perf_counter()
        text, results[name] = section()
        parts.append(f"\n### {title}\n\n{text}\n\n(The section took {time.perf_counter() - start:.0f} s.)")
    failed = sum("error" in row for rows in results.values() for row in rows)
    parts.append("\n" + summary(plan, results.get("training", []), failed, peak_source))
    parts.append(f"\nTotal {time.perf_counter() - started:.0f} s. Reproduce: `{command}`")
    return "\n".join(parts) + "\n", failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU even where CUDA is available")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend (the test's dry run takes aot_eager: the same graphs traced, no code generated)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    plan = Plan(
        device=torch.device("cuda" if cuda else "cpu"),
        **(GPU_PLAN if cuda else DRY_RUN_PLAN),
        compile_backend=args.compile_backend,
    )
    report, failed = run(plan, args.only, " ".join([p.prog, *argv]))
    print(report, flush=True)
    if args.out is not None:
        with atomic_output_file(args.out) as tmp:
            tmp.write_text(report)
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
