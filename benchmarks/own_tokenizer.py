"""Your corpus, your tokenizer (issue 26): the same small model trained for the same steps on a Spanish
corpus with a char vocabulary, GPT-2's BPE and a byte-level BPE trained by `prepare --tokenizer bpe:VOCAB`,
compared in validation bits per byte; and how fast `prepare` trains a BPE, per 100 MB, at what peak memory.

    python -m benchmarks.own_tokenizer [--work DIR] [--vocab 4096] [--iters 600] [--speed-mb 100]

The corpus is built offline from two Debian packages (`apt-get download fortunes-es manpages-es`, no root
needed; unpacked with dpkg-deb): each fortune a document, and each manual page a document with its roff
markup stripped by `man_text`. Written as JSON lines, so prepare streams it and every 10th document
validates. `--corpus FILE` uses a JSON-lines or text file of your own instead.

Every run: the same model (n_layer 4, n_head 4, n_embd 128, block 128, batch 16, AdamW, cosine schedule,
float32 on the CPU, no compile) for the same number of iterations, so the same tokens per step; what a
token holds differs, and bits per byte (the trainer's val_bpb: nats of the val windows' tokens over ln 2
and the bytes they decode to) is the figure that compares. The speed run times `prepare --tokenizer
bpe:VOCAB` in its own process on JSON lines of the standard library's source (benchmarks.prepare's
corpus), its peak PSS sampled from outside.
"""

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, markdown_table

PACKAGES = ("fortunes-es", "manpages-es")
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, dropout=0.0)

# roff, as Debian's Spanish manual pages use it: requests (".TH", ".SH", ".B text", ...), comments, font
# and size escapes, named characters; what is left is the text a reader sees
ROFF_COMMENT = re.compile(r'^\.\\".*$|\\".*$', re.M)
ROFF_REQUEST = re.compile(r"^[.'][ \t]*([A-Za-z]{1,3})\b[ \t]*(.*)$", re.M)
ROFF_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\s[+-]?\d+")
ROFF_NAMED = {r"\-": "-", r"\(aq": "'", r"\(dq": '"', r"\(em": "—", r"\(en": "–", r"\e": "\\", r"\ ": " ", r"\&": ""}
TEXT_REQUESTS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "TP", "IP", "HP", "UR", "MT"}


def man_text(roff: str) -> str:
    """The readable text of a manual page's roff source (an approximation: no layout, tables as they are)."""
    roff = ROFF_COMMENT.sub("", roff)

    def request(match: re.Match) -> str:
        name, rest = match.groups()
        if name not in TEXT_REQUESTS:
            return ""
        return rest.replace('"', "")

    text = ROFF_REQUEST.sub(request, roff)
    text = ROFF_FONT.sub("", text)
    for escape, char in ROFF_NAMED.items():
        text = text.replace(escape, char)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def spanish_corpus(work: Path) -> Path:
    """work/es.jsonl from the Debian packages, downloaded into work/debs once."""
    out = work / "es.jsonl"
    if out.is_file():
        return out
    debs, root = work / "debs", work / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("*.deb")):
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True, capture_output=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    documents = []
    for path in sorted((root / "usr/share/games/fortunes/es").glob("*.fortunes")):
        text = path.read_text(encoding="utf-8", errors="replace")
        documents += [f.strip("\n") + "\n" for f in re.split(r"^%$", text, flags=re.M) if f.strip()]
    for path in sorted((root / "usr/share/man/es").rglob("*.gz")):
        documents.append(man_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for document in documents:
            f.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out


def train_run(data_dir: Path, out_dir: Path, iters: int, tiny: bool) -> dict:
    """The same model and steps on one prepared folder: wall time, and the last evaluation's figures."""
    from hf_nanogpt.train import TrainConfig, train

    shape = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, dropout=0.0) if tiny else MODEL
    cfg = TrainConfig(
        out_dir=str(out_dir),
        data_dir=str(data_dir),
        init_from="scratch",
        max_iters=iters,
        lr_decay_iters=iters,
        warmup_iters=max(iters // 20, 1),
        eval_interval=max(iters // 4, 1),
        eval_iters=20 if not tiny else 2,
        log_interval=max(iters // 10, 1),
        learning_rate=3e-3,
        min_lr=3e-4,
        gradient_accumulation_steps=1,
        always_save_checkpoint=False,
        compile=False,
        dtype="float32",
        device="cpu",
        log_with="none",
        **shape,
    )
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if "val_loss" in r][-1]
    return {"seconds": seconds, "val_loss": last["val_loss"], "val_bpb": last["val_bpb"], "iter": last["iter"]}


def compare(corpus: Path, work: Path, vocab: int, iters: int, tiny: bool) -> list[dict]:
    from hf_nanogpt.data import prepare

    rows = []
    for tokenizer in ("char", "gpt2", f"bpe:{vocab}"):
        data_dir = work / f"data-{tokenizer.replace(':', '')}"
        start = time.perf_counter()
        info = prepare(corpus, data_dir, tokenizer=tokenizer, overwrite=True, log=lambda *a: None)
        prepare_s = time.perf_counter() - start
        run = train_run(data_dir, work / f"out-{tokenizer.replace(':', '')}", iters, tiny)
        rows.append(
            {
                "tokenizer": tokenizer,
                "vocab": info["vocab_size"],
                "tokens_per_byte": info["val_tokens_per_byte"][info["tokenizer"]],
                "prepare_s": prepare_s,
                **run,
            }
        )
    return rows


def speed(work: Path, megabytes: float, vocab: int, num_proc: int) -> dict:
    """`prepare --tokenizer bpe:VOCAB` on `megabytes` of JSON lines in its own process: the tokenizer's training
    time (prepare's own line), the whole run's wall time, and the process tree's peak PSS."""
    from .prepare import _environment, measured, write_corpus

    corpus = work / f"speed-{megabytes:g}MB.jsonl"
    size = write_corpus(corpus, megabytes)
    out = work / "speed-out"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from hf_nanogpt.cli import main; sys.exit(main(sys.argv[1:]))",
        "prepare",
        str(corpus),
        str(out),
        "--tokenizer",
        f"bpe:{vocab}",
        "--num_proc",
        str(num_proc),
        "--overwrite",
    ]
    result = measured(cmd, _environment())
    training = json.loads((out / "data_info.json").read_text())["tokenizer_training"]
    corpus.unlink()
    return {
        "megabytes": training["bytes"] / 1e6,
        "train_tokenizer_s": training["seconds"],
        "corpus_mb": size / 1e6,
        **result,
    }


def report(rows: list[dict], speed_row: dict | None, command: str) -> str:
    best = min(rows, key=lambda r: r["val_bpb"], default=None)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}`; "
        + "; ".join(f"{k}: {v}" for k, v in machine().items())
        + "."
    ]
    if rows:
        lines += [
            "",
            markdown_table(
                [
                    "tokenizer",
                    "vocab",
                    "val tokens/byte",
                    "val loss/token",
                    "val bits/byte",
                    "train wall s",
                    "prepare s",
                ],
                [
                    [
                        r["tokenizer"],
                        r["vocab"],
                        f"{r['tokens_per_byte']:.3f}",
                        f"{r['val_loss']:.4f}",
                        f"**{r['val_bpb']:.4f}**" if r is best else f"{r['val_bpb']:.4f}",
                        f"{r['seconds']:.1f}",
                        f"{r['prepare_s']:.1f}",
                    ]
                    for r in rows
                ],
            ),
        ]
    if speed_row is not None:
        per_100 = speed_row["train_tokenizer_s"] * 100 / speed_row["megabytes"]
        lines += [
            "",
            markdown_table(
                ["corpus", "training the BPE s", "per 100 MB s", "whole prepare s", "peak PSS, all processes"],
                [
                    [
                        f"{speed_row['megabytes']:.1f} MB",
                        f"{speed_row['train_tokenizer_s']:.1f}",
                        f"{per_100:.1f}",
                        f"{speed_row['seconds']:.1f}",
                        f"{speed_row['peak_pss'] / 1e6:,.0f} MB",
                    ]
                ],
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.own_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work", type=Path, default=None, help="where the corpus, data and runs go (default: a temp dir)")
    p.add_argument("--corpus", type=Path, default=None, help="your own corpus instead of the Spanish one")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--speed-mb", type=float, default=100, help="corpus size for the speed run; 0 skips it")
    p.add_argument("--speed-vocab", type=int, default=8192)
    p.add_argument("--num-proc", type=int, default=os.cpu_count())
    p.add_argument("--speed-only", action="store_true", help="the speed run alone, no training runs")
    p.add_argument("--tiny", action="store_true", help="a tiny model and few steps: checks the code, measures nothing")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = (
            []
            if args.speed_only
            else compare(args.corpus or spanish_corpus(work), work, args.vocab, args.iters, args.tiny)
        )
        speed_row = speed(work, args.speed_mb, args.speed_vocab, args.num_proc) if args.speed_mb > 0 else None
    print(report(rows, speed_row, " ".join([p.prog, *(argv if argv is not None else sys.argv[1:])])))


if __name__ == "__main__":
    main()
