"""B2: a training step (forward, backward, AdamW), hf_nanogpt against GPT2LMHeadModel on the same weights.

    python -m benchmarks.training [--shapes gpt2-124m shakespeare-char-cpu] [--repeats 5] [--curve-steps 200]

Two comparisons per shape, on Python standard-library source prepared the nanoGPT way (GPT-2 BPE for
the 124M shape, characters for the small one), both models starting from the same random weights and
seeing the same batches:

- model against model: both eager float32, torch.optim.AdamW with nanoGPT's settings (lr 6e-4, betas
  0.9/0.95, weight decay 0.1) in its default implementation, `model(x, labels=x)`; steps alternate.
- `hf-nanogpt train` as it runs by default (its own process: Accelerate, whatever precision, optimizer
  and compilation its defaults pick on this machine) against GPT2LMHeadModel the way a typical user runs
  it (eager float32, torch AdamW with its default implementation, no clipping). Both follow nanoGPT's
  schedule (warmup over a tenth of the run, cosine to lr/10; the user loop through a LambdaLR) and the
  trainer runs without clipping too, so the loss curves are comparable. Step times are the trainer's
  own per-iteration `dt` from its log.jsonl.

Achieved FLOP/s count nanoGPT's 6N + attention FLOPs per token (hf_nanogpt.training.measure.flops_per_token),
against torch.mm's FLOP/s on 2048x2048 matrices measured in the same run, in the dtype that did the work.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.demo import stdlib_corpus
from hf_nanogpt.training.config import TrainConfig
from hf_nanogpt.training.devices import auto_dtype
from hf_nanogpt.training.measure import flops_per_token
from hf_nanogpt.training.optim import get_lr

from .common import GPT2_124M, TINY, alternate, gpt2_pair, markdown_table, matmul_flops, ratio_cell

SHAPES = {
    # name: (model shape, block size, batch size, tokenizer)
    "gpt2-124m": (GPT2_124M, 256, 4, "gpt2"),
    "shakespeare-char-cpu": (dict(n_layer=4, n_head=4, n_embd=128, n_positions=64), 64, 12, "char"),
    "tiny": (TINY, 32, 2, "char"),
}
ADAMW = dict(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


def schedule(steps: int) -> TrainConfig:
    """nanoGPT's learning-rate schedule for a run of `steps`: warmup over the first tenth, cosine to lr/10."""
    return TrainConfig(
        learning_rate=ADAMW["lr"], warmup_iters=max(1, steps // 10), lr_decay_iters=steps, min_lr=ADAMW["lr"] / 10
    )


def schedule_args(steps: int) -> list[str]:
    cfg = schedule(steps)
    return [f"--warmup_iters={cfg.warmup_iters}", f"--lr_decay_iters={cfg.lr_decay_iters}", f"--min_lr={cfg.min_lr}"]


def trainer_batches(data: TokenData, block_size: int, batch_size: int):
    """The trainer's training windows in its order: TokenData.random_batch, the trainer's own draw, from
    a generator seeded as the trainer seeds it."""
    generator = torch.Generator().manual_seed(TrainConfig.seed)
    while True:
        yield data.random_batch("train", block_size, batch_size, generator)


def user_step(model, optimizer, x: torch.Tensor) -> float:
    """One step as a transformers user writes it."""
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def prepare_data(root: Path, tokenizer: str, chars: int) -> TokenData:
    """`chars` characters of standard-library source, prepared as `hf-nanogpt prepare` does (once)."""
    data_dir = root / f"data-{tokenizer}"
    if not data_dir.exists():
        corpus = root / "corpus.txt"
        corpus.write_text(stdlib_corpus(chars))
        prepare(corpus, data_dir, tokenizer=tokenizer, log=lambda *a: None)
    return TokenData(data_dir)


def model_vs_model(gpt2, ours, batches, repeats: int, warmup: int = 2) -> dict:
    gpt2.train(), ours.train()
    optimizers = {
        "gpt2": torch.optim.AdamW(gpt2.parameters(), **ADAMW),
        "ours": torch.optim.AdamW(ours.parameters(), **ADAMW),
    }
    rounds = [next(batches)[0] for _ in range(warmup + repeats)]
    losses = {"gpt2": [], "ours": []}

    def side(name, model):
        def step():
            losses[name].append(user_step(model, optimizers[name], rounds[len(losses[name])]))

        return step

    t = alternate({"gpt2": side("gpt2", gpt2), "ours": side("ours", ours)}, repeats, warmup, "B2 model against model")
    return {
        "gpt2_s": t.median("gpt2"),
        "ours_s": t.median("ours"),
        "ratio": t.ratio("ours", "gpt2"),
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses["gpt2"], losses["ours"])),
        "repeats": repeats,
    }


def run_trainer(
    init_dir: Path, data_dir: Path, out_dir: Path, block_size: int, batch_size: int, steps: int
) -> list[dict]:
    """`hf-nanogpt train` with its defaults, except what makes the run comparable; per-iteration log."""
    cmd = [
        sys.executable,
        "-m",
        "hf_nanogpt.train",
        f"--init_from={init_dir}",
        f"--data_dir={data_dir}",
        f"--out_dir={out_dir}",
        f"--block_size={block_size}",
        f"--batch_size={batch_size}",
        "--gradient_accumulation_steps=1",
        f"--max_iters={steps - 1}",
        f"--eval_interval={steps}",
        "--eval_iters=1",
        "--log_interval=1",
        "--grad_clip=0.0",
        "--dropout=0.0",
        *schedule_args(steps),
        f"--learning_rate={ADAMW['lr']}",
        f"--beta1={ADAMW['betas'][0]}",
        f"--beta2={ADAMW['betas'][1]}",
        f"--weight_decay={ADAMW['weight_decay']}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [entry for entry in log if "dt" in entry]


def trainer_vs_user(
    gpt2,
    initial: dict,
    init_dir: Path,
    data: TokenData,
    block_size: int,
    batch_size: int,
    steps: int,
    rounds: int,
    warmup: int,
    work: Path,
) -> dict:
    """The trainer started from `init_dir`, GPT2LMHeadModel from `initial` (the same weights)."""
    trainer_dt, user_dt, trainer_curve, user_curve = [], [], None, None
    for r in tqdm(range(rounds), desc="B2 trainer against user loop", unit="round", leave=False):  # sides take turns
        log = run_trainer(init_dir, data.dir, work / f"trainer{r}", block_size, batch_size, steps)
        trainer_dt += [entry["dt"] for entry in log[warmup:]]
        trainer_curve = trainer_curve or [entry["loss"] for entry in log]

        gpt2.load_state_dict(initial)
        gpt2.train()
        optimizer = torch.optim.AdamW(gpt2.parameters(), **ADAMW)
        cfg = schedule(steps)  # the trainer's schedule, as a user would set it with a LambdaLR
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: get_lr(it, cfg) / cfg.learning_rate)
        batches, curve = trainer_batches(data, block_size, batch_size), []
        for i in range(steps):
            x, _ = next(batches)
            start = time.perf_counter()
            curve.append(user_step(gpt2, optimizer, x))
            scheduler.step()
            if i >= warmup:
                user_dt.append(time.perf_counter() - start)
        user_curve = user_curve or curve
    trainer_s, user_s = statistics.median(trainer_dt), statistics.median(user_dt)
    return {
        "trainer_s": trainer_s,
        "user_s": user_s,
        "ratio": trainer_s / user_s,
        "steps": steps,
        "rounds": rounds,
        "timed_steps": len(trainer_dt),
        "trainer_curve": trainer_curve,
        "user_curve": user_curve,
    }


def curve_summary(a: list[float], b: list[float], window: int) -> dict:
    """Mean losses of the first and last `window` steps of curves a and b, the largest gap between their
    moving averages, and the spread of a's per-step losses over its last window (one batch's noise)."""
    window = max(1, min(window, len(a) // 2))

    def moving(c):
        return [statistics.mean(c[i : i + window]) for i in range(len(c) - window + 1)]

    return {
        "first": (statistics.mean(a[:window]), statistics.mean(b[:window])),
        "last": (statistics.mean(a[-window:]), statistics.mean(b[-window:])),
        "drift": max(abs(x - y) for x, y in zip(moving(a), moving(b))),
        "noise": statistics.pstdev(a[-window:]),
        "window": window,
    }


def run(
    shapes=("gpt2-124m", "shakespeare-char-cpu"),
    repeats: int = 5,
    curve_steps: int = 200,
    rounds: int = 2,
    corpus_chars: int = 1_000_000,
    gpt2_curve_steps: int = 0,
) -> dict:
    out = {"shapes": [], "mm_float32": matmul_flops(torch.float32), "trainer_dtype": auto_dtype(cuda=False)}
    if out["trainer_dtype"] == "bfloat16":
        out["mm_bfloat16"] = matmul_flops(torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        for name in shapes:
            shape, block_size, batch_size, tokenizer = SHAPES[name]
            data = prepare_data(work, tokenizer, corpus_chars)
            shape = {**shape, "vocab_size": data.vocab_size or shape["vocab_size"]}
            gpt2, ours = gpt2_pair(shape, work / name / "gpt2")
            init_dir = work / name / "init"
            ours.save_pretrained(init_dir)  # both sides of both comparisons start from these weights
            initial = {k: v.clone() for k, v in gpt2.state_dict().items()}
            mvm = model_vs_model(gpt2, ours, trainer_batches(data, block_size, batch_size), repeats)
            # a long loss curve on the small shapes; on GPT-2 124M (7 s a step for both sides together on
            # 2 cores) the timed steps are the curve unless asked for more
            steps = curve_steps if name != "gpt2-124m" else max(gpt2_curve_steps, repeats + 2)
            tvu = trainer_vs_user(
                gpt2, initial, init_dir, data, block_size, batch_size, steps, rounds, warmup=2, work=work / name
            )
            out["shapes"].append(
                {
                    "name": name,
                    "block_size": block_size,
                    "batch_size": batch_size,
                    "flops_per_step": flops_per_token(ours, block_size) * block_size * batch_size,
                    "tokens_per_step": block_size * batch_size,
                    "model_vs_model": mvm,
                    "trainer_vs_user": tvu,
                }
            )
    return out


def report(results: dict, command: str) -> str:
    probes = {"float32": results["mm_float32"], "bfloat16": results.get("mm_bfloat16")}
    trainer_dtype = results["trainer_dtype"]

    def flops(shape, seconds, dtype):
        achieved = shape["flops_per_step"] / seconds
        return f"{achieved / 1e9:.1f} ({100 * achieved / probes[dtype]:.0f}% of {dtype} mm)"

    rows = []
    for s in results["shapes"]:
        what = f"{s['name']} (block {s['block_size']}, batch {s['batch_size']})"
        m, t = s["model_vs_model"], s["trainer_vs_user"]
        tokens = s["tokens_per_step"]
        rows += [
            [
                what,
                "GPT2LMHeadModel, eager float32, AdamW",
                f"{1e3 * m['gpt2_s']:.1f}",
                f"{tokens / m['gpt2_s']:,.0f}",
                flops(s, m["gpt2_s"], "float32"),
                "1.00x",
                m["repeats"],
            ],
            [
                what,
                "hf_nanogpt, eager float32, AdamW",
                f"{1e3 * m['ours_s']:.1f}",
                f"{tokens / m['ours_s']:,.0f}",
                flops(s, m["ours_s"], "float32"),
                ratio_cell(m["ratio"]),
                m["repeats"],
            ],
            [
                what,
                "GPT2LMHeadModel as users run it (eager float32, AdamW defaults)",
                f"{1e3 * t['user_s']:.1f}",
                f"{tokens / t['user_s']:,.0f}",
                flops(s, t["user_s"], "float32"),
                "1.00x",
                t["timed_steps"],
            ],
            [
                what,
                f"`hf-nanogpt train` defaults ({trainer_dtype})",
                f"{1e3 * t['trainer_s']:.1f}",
                f"{tokens / t['trainer_s']:,.0f}",
                flops(s, t["trainer_s"], trainer_dtype),
                ratio_cell(t["ratio"]),
                t["timed_steps"],
            ],
        ]
    out = [
        f"torch.mm probe in this run: float32 {results['mm_float32'] / 1e9:.1f} GFLOP/s"
        + (f", bfloat16 {results['mm_bfloat16'] / 1e9:.1f} GFLOP/s" if "mm_bfloat16" in results else "")
        + ".\n",
        markdown_table(
            [
                "shape",
                "run",
                "ms per step (median)",
                "tokens/s",
                "GFLOP/s achieved",
                "ours/theirs (step time)",
                "timed steps",
            ],
            rows,
        ),
    ]
    curve_rows = []
    for s in results["shapes"]:
        m, t = s["model_vs_model"], s["trainer_vs_user"]
        c = curve_summary(t["trainer_curve"], t["user_curve"], window=20)
        curve_rows.append(
            [
                s["name"],
                t["steps"],
                f"{m['max_loss_diff']:.2e}",
                f"{c['first'][0]:.3f} / {c['first'][1]:.3f}",
                f"{c['last'][0]:.3f} / {c['last'][1]:.3f}",
                f"{c['drift']:.3f}",
                f"{c['noise']:.3f}",
                c["window"],
            ]
        )
    out.append(
        "\nLoss curves from the same weights and batches. Model against model: the largest per-step loss "
        "difference. Trainer against the user loop: mean loss over the first and last `window` steps (trainer / "
        "GPT2LMHeadModel; the trainer predicts all T positions of a window from its targets, the user loop "
        "T-1 from `labels=x`), the largest gap between the two curves' moving averages, and the spread of the "
        "per-step loss over the last window (the batch-to-batch noise).\n"
    )
    out.append(
        markdown_table(
            [
                "shape",
                "steps",
                "model vs model: max loss diff",
                "first window: trainer / user",
                "last window: trainer / user",
                "largest moving-average gap",
                "per-step noise (std)",
                "window",
            ],
            curve_rows,
        )
    )
    out.append(f"\nReproduce: `{command}`")
    return "\n".join(out)


def benchmark(argv: list[str]) -> str:
    """Parse `argv`, run, and return the Markdown report (with the command that reproduces it)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["gpt2-124m", "shakespeare-char-cpu"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--curve-steps", type=int, default=200, help="steps of the loss-curve runs on the small shapes")
    p.add_argument(
        "--gpt2-curve-steps",
        type=int,
        default=0,
        help="steps of the loss-curve runs on gpt2-124m (default: just the timed steps; 200 take ~50 min)",
    )
    p.add_argument("--rounds", type=int, default=2, help="trainer runs and user-loop runs, taking turns")
    p.add_argument("--tiny", action="store_true", help="a tiny model, short runs: checks that the code runs")
    args = p.parse_args(argv)
    if args.tiny:
        results = run(["tiny"], args.repeats, curve_steps=12, rounds=1, corpus_chars=50_000)
    else:
        results = run(args.shapes, args.repeats, args.curve_steps, args.rounds, gpt2_curve_steps=args.gpt2_curve_steps)
    return report(results, " ".join([p.prog, *argv]))


def main() -> None:
    print(benchmark(sys.argv[1:]))


if __name__ == "__main__":
    main()
