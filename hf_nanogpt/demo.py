"""`make demo`: train a small character-level nanoGPT end to end, with nothing to download.

1. Corpus: Python source from the standard library of the interpreter running this (any machine has it).
2. Tokenizer: character level, nanoGPT style (ids in sorted-character order), saved as tokenizer.json.
3. Train: nanoGPT's CPU recipe for shakespeare_char (4 layers, 4 heads, 128 dims, block 64, batch 12),
   AdamW, cosine learning rate with warmup, gradient clipping, a straight loop as in nanoGPT's train.py.
4. Save in Hugging Face format, load back through AutoModelForCausalLM and pipeline("text-generation"),
   and print a sample and the final losses.

    python -m hf_nanogpt.demo [--out_dir out/demo] [--max_iters 2000] ...
"""

import argparse
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup, pipeline

from . import NanoGPTConfig, NanoGPTForCausalLM
from .model_card import render_model_card, table
from .saving import save_model_folder
from .tokenization import char_tokenizer

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


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """nanoGPT's random windows: (batch_size, block_size) ids; the model shifts labels itself."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return torch.stack([data[i : i + block_size] for i in ix])


@torch.no_grad()
def estimate_loss(model, splits: dict, args, generator: torch.Generator) -> dict:
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = [model(x, labels=x).loss.item() for x in (get_batch(data, args.batch_size, args.block_size, generator) for _ in range(args.eval_iters))]
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/demo")
    p.add_argument("--max_chars", type=int, default=1_000_000, help="size of the corpus")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--eval_iters", type=int, default=20)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    text = stdlib_corpus(args.max_chars)
    tokenizer = char_tokenizer(text, model_max_length=args.block_size)
    data = torch.tensor(tokenizer.backend_tokenizer.encode(text).ids, dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    print(f"corpus: {len(text):,} characters of Python standard-library source, vocab size {len(tokenizer)}")

    config = NanoGPTConfig(
        vocab_size=len(tokenizer),
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=0.0,
        bias=False,
    )
    model = NanoGPTForCausalLM(config)
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters, {config.n_layer} layers, block_size {config.block_size}")

    decay = [p for p in model.parameters() if p.dim() >= 2]  # weight decay on matrices and embeddings only
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.99),
    )
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, args.warmup_iters, args.max_iters, min_lr=args.min_lr
    )

    history = []
    t_train = time.time()
    model.train()
    bar = tqdm(range(args.max_iters + 1), desc="training", unit="iter", mininterval=1.0)
    for it in bar:
        if it % args.eval_interval == 0 or it == args.max_iters:
            losses = estimate_loss(model, splits, args, generator)
            history.append({"iter": it, **losses})
            bar.write(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if it == args.max_iters:
            break
        x = get_batch(splits["train"], args.batch_size, args.block_size, generator)
        loss = model(x, labels=x).loss
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()} at iter {it}: stopping.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
    bar.close()
    train_seconds = time.time() - t_train

    model.eval()
    card = model_card(args, history, len(text), len(tokenizer))
    out_dir = save_model_folder(model, args.out_dir, tokenizer, model_card=card, overwrite=True)
    print(f"saved: {out_dir} ({', '.join(sorted(p.name for p in out_dir.iterdir()))})")

    # Load back the way a user would, through the Auto classes and the pipeline.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    x = get_batch(splits["val"], 4, args.block_size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (reloaded(x).logits - model(x).logits).abs().max().item()
    generator_pipe = pipeline("text-generation", model=str(out_dir), tokenizer=AutoTokenizer.from_pretrained(out_dir))
    torch.manual_seed(args.seed)
    sample = generator_pipe(args.prompt, max_new_tokens=args.block_size - len(args.prompt), do_sample=True, top_k=200, temperature=0.8)
    print("-" * 60)
    print(sample[0]["generated_text"])
    print("-" * 60)
    final = history[-1]
    print(f"reloaded model matches the trained one: max |logits difference| = {diff:.2e}")
    print(f"final loss: train {final['train']:.4f}, val {final['val']:.4f} (step 0: val {history[0]['val']:.4f})")
    print(f"demo took {time.time() - t_start:.0f} s (training {train_seconds:.0f} s)")
    if diff > 1e-5:
        raise RuntimeError(f"The reloaded model's logits differ from the trained model's by {diff}.")
    return {"history": history, "sample": sample[0]["generated_text"], "max_diff": diff, "out_dir": str(out_dir)}


def model_card(args, history: list, corpus_chars: int, vocab_size: int) -> str:
    return render_model_card(
        title="hf_nanogpt demo: a character-level nanoGPT trained on Python source",
        summary=(
            f"Made by `make demo` (`python -m hf_nanogpt.demo`) of hf_nanogpt: {args.n_layer} layers, "
            f"{args.n_head} heads, {args.n_embd} dimensions, block size {args.block_size}, a vocabulary of "
            f"{vocab_size} characters, trained {args.max_iters} iterations (batch {args.batch_size}) on "
            f"{corpus_chars:,} characters of the Python standard library's source."
        ),
        sections={"Training": table([{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in h.items()} for h in history], ["iter", "train", "val"])},
        model_ref=str(args.out_dir),
        tags=["character-level", "demo"],
        prompt=args.prompt,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
