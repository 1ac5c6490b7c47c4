"""`make demo`: train a small character-level nanoGPT end to end, with nothing to download.

1. Corpus: Python source from the standard library of the interpreter running this (any machine has it),
   written out and prepared the nanoGPT way (`hf-nanogpt prepare`: train.bin, val.bin, meta.pkl).
2. Train: hf_nanogpt's Accelerate trainer (`hf-nanogpt train`) with nanoGPT's CPU recipe for
   shakespeare_char (4 layers, 4 heads, 128 dims, block 64, batch 12, 2000 iterations).
3. The trainer writes a Hugging Face model folder; load it back through AutoModelForCausalLM and
   pipeline("text-generation") and print a sample and the final losses.

    python -m hf_nanogpt.demo [--out_dir out/demo] [--max_iters 2000] ...
"""

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, pipeline

from .data.tokens import TokenData
from .data.writing import prepare
from .train import TrainConfig, train

PRINTABLE = set(map(chr, range(32, 127))) | {"\n"}


def stdlib_corpus(max_chars: int = 1_000_000) -> str:
    """About `max_chars` of printable-ASCII Python source, from the standard library's top-level modules
    in sorted order (lines with tabs or other characters are left out, to keep the vocabulary small)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        kept = "".join(line for line in text.splitlines(keepends=True) if set(line) <= PRINTABLE)
        parts.append(kept)
        size += len(kept)
        if size >= max_chars:
            break
    corpus = "".join(parts)[:max_chars]
    if len(corpus) < 10_000:
        raise RuntimeError(f"Found only {len(corpus)} characters of Python source under {stdlib}.")
    return corpus


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/demo", help="the trained model folder")
    p.add_argument("--data_dir", default="out/demo_data", help="the prepared corpus")
    p.add_argument("--max_chars", type=int, default=1_000_000, help="size of the corpus")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--eval_iters", type=int, default=20)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus = data_dir.parent / f"{data_dir.name}.txt"
    text = stdlib_corpus(args.max_chars)
    corpus.write_text(text, encoding="utf-8")
    print(f"corpus: {len(text):,} characters of Python standard-library source -> {corpus}")
    prepare(corpus, data_dir, tokenizer="char", overwrite=True)

    cfg = TrainConfig(
        out_dir=args.out_dir,
        data_dir=str(data_dir),
        dataset="python-stdlib",
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        log_interval=10,
        always_save_checkpoint=False,
        gradient_accumulation_steps=1,
        batch_size=args.batch_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=0.0,
        learning_rate=1e-3,
        max_iters=args.max_iters,
        lr_decay_iters=args.max_iters,
        min_lr=1e-4,
        beta2=0.99,
        warmup_iters=args.warmup_iters,
        device="cpu",
        compile=False,
        seed=args.seed,
        log_with="none",
    )
    t_train = time.time()
    result = train(cfg)
    train_seconds = time.time() - t_train
    history = result["history"]

    # Load back the way a user would, through the Auto classes and the pipeline.
    out_dir = Path(args.out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    val = TokenData(data_dir)
    x, y = val.windows("val", torch.arange(0, 4 * args.block_size, args.block_size), args.block_size)
    with torch.no_grad():
        reloaded_val_loss = model(x, shift_labels=y).loss.item()
    generator = pipeline("text-generation", model=str(out_dir))
    torch.manual_seed(args.seed)
    # the folder's generation_config.json: sampling as nanoGPT's sample.py, up to block_size tokens in all
    sample = generator(args.prompt)
    best = min(history, key=lambda h: h["val"])
    print("-" * 60)
    print(sample[0]["generated_text"])
    print("-" * 60)
    print(f"saved: {out_dir} ({', '.join(sorted(p.name for p in out_dir.iterdir()))})")
    print(f"reloaded model: val loss {reloaded_val_loss:.4f} on 4 windows")
    print(
        f"final loss: train {history[-1]['train']:.4f}, val {history[-1]['val']:.4f} at iter {history[-1]['iter']} "
        f"(best val {best['val']:.4f} at iter {best['iter']}, saved; step 0: val {history[0]['val']:.4f})"
    )
    print(f"demo took {time.time() - t_start:.0f} s (training {train_seconds:.0f} s)")
    return {
        "history": history,
        "sample": sample[0]["generated_text"],
        "out_dir": str(out_dir),
        "reloaded_val_loss": reloaded_val_loss,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
