"""`hf-nanogpt prepare`: a source (sources.py) encoded (encoding.py) and written as a data folder in
nanoGPT's layout or as llm.c's shards (shards.py), which the trainer reads (tokens.py).

    prepare("input.txt", "data/shakespeare_char", tokenizer="char")       # what nanoGPT's prepare.py scripts do
    prepare("HuggingFaceFW/fineweb", "data/fineweb10B", tokenizer="gpt2", dataset_config="sample-10BT",
            val_fraction=0.01, shard_tokens="100M")                         # llm.c's fineweb.py, streamed

`prepare` streams: documents are read a block at a time, cut into segments, encoded in worker processes a
piece at a time, and written as the pieces come back, in order. Memory is bounded by the pieces in flight
(`max_memory`), not by the corpus.
"""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..saving import atomic_output_dir, check_apart
from ..tokenization import char_tokenizer, char_vocab, load_tokenizer, write_meta_pkl
from .encoding import Encoder, cut_rule, encode_pieces, pieces
from .shards import SHARD_PREFIX, shard_header
from .sources import characters, open_source, route
from .tokens import INFO_FILE, SPLITS

# how `prepare` cuts its work (see prepare's docstring for the memory bound)
MAX_PIECE_CHARS = 1 << 22  # text handed to a worker at once
MIN_PIECE_CHARS = 1 << 12
BYTES_PER_CHAR = 8  # memory a character in flight costs: its text, its pickled copy, its ids (measured, BENCHMARKS.md)


# ---------------------------------------------------------------------------------------------------
# the writers


class BinWriter:
    """nanoGPT's split file: the ids back to back, appended as they come."""

    def __init__(self, path: Path):
        self.file, self.count = open(path, "wb"), 0

    def write(self, ids: np.ndarray) -> None:
        ids.tofile(self.file)
        self.count += len(ids)

    def close(self) -> int:
        self.file.close()
        return self.count


class ShardWriter:
    """A split as shards of `shard_tokens` tokens (the last one shorter) in llm.c's format, named
    shard_{split}_{index:06d}.bin; a shard's header gets its count when the shard is complete."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype: np.dtype):
        self.folder, self.split, self.shard_tokens, self.dtype = folder, split, shard_tokens, dtype.newbyteorder("<")
        self.file, self.index, self.in_shard, self.count = None, 0, 0, 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                self._start()
            part, ids = ids[: self.shard_tokens - self.in_shard], ids[self.shard_tokens - self.in_shard :]
            part.astype(self.dtype, copy=False).tofile(self.file)
            self.in_shard += len(part)
            self.count += len(part)
            if self.in_shard == self.shard_tokens:
                self._finish()

    def _start(self) -> None:
        self.file = open(self.folder / f"{SHARD_PREFIX}_{self.split}_{self.index:06d}.bin", "wb")
        self.file.write(shard_header(0, self.dtype))

    def _finish(self) -> None:
        self.file.seek(0)
        self.file.write(shard_header(self.in_shard, self.dtype))
        self.file.close()
        self.file, self.index, self.in_shard = None, self.index + 1, 0

    def close(self) -> int:
        if self.file is None and self.index == 0:
            self._start()  # nothing came: the split still gets its (empty) shard
        if self.file is not None:
            self._finish()
        return self.count


# ---------------------------------------------------------------------------------------------------
# `hf-nanogpt prepare`


UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_size(value: str | int, what: str) -> int:
    """'512MB', '1GB', '1.5GiB', '100M', 4096 -> a whole number (K, M, G, T: powers of 1000; Ki, Mi, Gi, Ti:
    of 1024; a B after them is optional)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]i?)?[bB]?\s*", str(value))
    if match is None:
        raise ValueError(
            f"{what} {value!r}: expected a number with an optional unit, such as 512MB, 1GB, 100M or 4096."
        )
    return int(float(match.group(1)) * UNITS[(match.group(2) or "").upper()])


def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    text_column: str = "text",
    overwrite: bool = False,
    log=print,
    *,
    split: str = "train",
    dataset_config: str | None = None,
    num_proc: int | None = None,
    max_memory: str | int = "1GB",
    shard_tokens: str | int | None = None,
) -> dict:
    """Tokenize `source` (`open_source`: a text file, a folder of text files, a `datasets` data set) into
    nanoGPT's layout, or into llm.c's shards of `shard_tokens` tokens. `tokenizer`: "char" (vocabulary from
    the text, meta.pkl written; a first pass reads the source for its characters), "gpt2", or a tokenizer
    folder / meta.pkl.

    The val split is fixed by the data alone (the same on every run, whatever num_proc):
    - one text (a text file, a one-row data set): its first (1 - val_fraction) of characters train, the
      rest validate, as nanoGPT's shakespeare prepare.py scripts split (a first pass counts the characters);
    - N documents, N known before reading (a folder, a saved data set): the first int(N (1 - val_fraction))
      train (at least one document each side);
    - a stream, whose length is known only at its end (a Hub data set, local data files): document i
      validates when floor((i + 1) val_fraction) > floor(i val_fraction), every (1/val_fraction)-th
      document, spread evenly over the stream (0.01: documents 99, 199, ...).
    Several documents get <|endoftext|> after each (GPT-2 style tokenizers, as nanoGPT's openwebtext
    prepare.py); llm.c's fineweb.py puts it before each instead, but after keeps one token stream for
    both layouts (the shards of a split, joined, are its train.bin) and the same separator between
    documents: only the stream's first and last token differ.

    Work is spread over `num_proc` processes (default: the CPU count) in pieces of at most 4M characters,
    2 per process in flight; `max_memory` (e.g. "1GB", "512MB") bounds what those pieces take (their text,
    its copies and ids: BYTES_PER_CHAR each character), by making them smaller, down to 4k characters.
    Not counted: the interpreter and libraries (a few hundred MB) and a document that cannot be cut (a
    tokenizer other than char level and GPT-2's byte-level BPE encodes documents whole; a GPT-2 text cuts
    only before newlines). Memory does not grow with the corpus."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    num_proc = (os.cpu_count() or 1) if num_proc is None else num_proc
    if num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}.")
    budget = parse_size(max_memory, "max_memory")
    if shard_tokens is not None:
        shard_tokens = parse_size(shard_tokens, "shard_tokens")
        if not 0 < shard_tokens < 2**31:
            raise ValueError(
                f"shard_tokens must be in [1, 2^31) (the header's count is an int32), got {shard_tokens:,}."
            )
    check_apart(out_dir, source, "OUT_DIR", "INPUT")
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: pass --overwrite to replace it.")
    src = open_source(source, text_column, split, dataset_config)
    tok = char_tokenizer(characters(src)) if tokenizer == "char" else load_tokenizer(tokenizer)
    stoi = char_vocab(tok)
    dtype = np.dtype(np.uint16 if len(tok) <= 2**16 else np.uint32)
    encoder = Encoder(tok, tokenizer, dtype)
    in_flight = 2 * num_proc
    piece_chars = min(MAX_PIECE_CHARS, max(MIN_PIECE_CHARS, budget // (in_flight * BYTES_PER_CHAR)))
    work = pieces(route(src, val_fraction), cut_rule(tok), piece_chars)
    started, tokens, text_bytes = time.perf_counter(), 0, 0
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writers = {
            name: ShardWriter(tmp, name, shard_tokens, dtype) if shard_tokens else BinWriter(tmp / f"{name}.bin")
            for name in SPLITS
        }
        try:
            with tqdm(
                total=src.bytes,
                desc=f"encoding ({encoder.name}, {num_proc} process{'es' if num_proc > 1 else ''})",
                unit="B",
                unit_scale=True,
                mininterval=1.0,
            ) as bar:
                for name, ids, nbytes in encode_pieces(work, encoder, num_proc, in_flight):
                    writers[name].write(ids)
                    tokens, text_bytes = tokens + len(ids), text_bytes + nbytes
                    bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
                    bar.update(nbytes)
        finally:
            counts = {name: writer.close() for name, writer in writers.items()}
        info = {
            "dtype": dtype.name,
            "vocab_size": len(tok),
            "tokenizer": "char" if stoi else str(tokenizer),
            "source": str(source),
        }
        if shard_tokens:
            info.update(layout="shards", shard_tokens=shard_tokens)
        if stoi is not None:
            write_meta_pkl(tmp / "meta.pkl", stoi)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    seconds = time.perf_counter() - started
    shards = f", shards of {shard_tokens:,}" if shard_tokens else ""
    log(
        f"{src.description}: {counts['train']:,} train and {counts['val']:,} val tokens "
        f"({dtype.name}{shards}), vocab {len(tok)} "
        f"-> {out_dir} ({text_bytes / 1e6:,.1f} MB in {seconds:.1f} s, "
        f"{text_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s; "
        f"{num_proc} process{'es' if num_proc > 1 else ''}, {encoder.name})"
    )
    return {**info, **counts}


__all__ = ["BinWriter", "ShardWriter", "parse_size", "prepare"]
