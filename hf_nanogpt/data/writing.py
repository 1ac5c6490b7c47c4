"""`hf-nanogpt prepare`: a source (sources.py) encoded (encoding.py) and written as a data folder in
nanoGPT's layout or as llm.c's shards (shards.py), which the trainer reads (tokens.py).

    prepare("input.txt", "data/shakespeare_char", tokenizer="char")       # what nanoGPT's prepare.py scripts do
    prepare("HuggingFaceFW/fineweb", "data/fineweb10B", tokenizer="gpt2", dataset_config="sample-10BT",
            val_fraction=0.01, shard_tokens="100M")                         # llm.c's fineweb.py, streamed
    prepare("input.txt", "data/shakespeare_bpe", tokenizer="bpe:8192")     # a BPE trained on the train split
    prepare("chat.jsonl", "data/chat", tokenizer="gpt2")                   # conversations: ids and a loss mask

`prepare` streams: documents are read a block at a time, cut into segments, encoded in worker processes a
piece at a time, and written as the pieces come back, in order. Memory is bounded by the pieces in flight
(`max_memory`), not by the corpus. A BPE to train (`train_bpe`) gets a pass of its own over the train split
first, also streamed. Conversations (a messages column) are encoded by conversations.py the same way, a
conversation for a document, and each token file gets its loss mask beside it (tokens.py says the layout).
"""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..chat import ROLES
from ..saving import atomic_output_dir, check_apart
from ..tokenization import (
    bpe_vocab_size,
    char_tokenizer,
    char_vocab,
    load_tokenizer,
    train_bpe_tokenizer,
    write_meta_pkl,
)
from .conversations import BadRows, ChatEncoder, chat_tokenizer, context_tokens, conversation_pieces
from .encoding import SEGMENT_CHARS, Encoder, cut_rule, encode_pieces, pieces, segments, tokenizers_threads, utf8_bytes
from .shards import SHARD_PREFIX, shard_header
from .sources import Source, characters, open_source, route
from .tokens import INFO_FILE, SPLITS, TOKENIZER_DIR, mask_path

# how `prepare` cuts its work (see prepare's docstring for the memory bound)
MAX_PIECE_CHARS = 1 << 22  # text handed to a worker at once
MIN_PIECE_CHARS = 1 << 12
BYTES_PER_CHAR = 8  # memory a character in flight costs: its text, its pickled copy, its ids (measured, BENCHMARKS.md)


# ---------------------------------------------------------------------------------------------------
# the writers


class BinWriter:
    """nanoGPT's split file: the ids back to back, appended as they come; `masked`: their loss mask beside it."""

    def __init__(self, path: Path, masked: bool = False):
        self.file, self.count = open(path, "wb"), 0
        self.mask = open(mask_path(path), "wb") if masked else None

    def write(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        ids.tofile(self.file)
        if self.mask is not None:
            mask.tofile(self.mask)
        self.count += len(ids)

    def close(self) -> int:
        self.file.close()
        if self.mask is not None:
            self.mask.close()
        return self.count


class ShardWriter:
    """A split as shards of `shard_tokens` tokens (the last one shorter) in llm.c's format, named
    shard_{split}_{index:06d}.bin; a shard's header gets its count when the shard is complete. `masked`: each
    shard's loss mask beside it (shard_{split}_{index:06d}.mask, no header)."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype: np.dtype, masked: bool = False):
        self.folder, self.split, self.shard_tokens, self.dtype = folder, split, shard_tokens, dtype.newbyteorder("<")
        self.file, self.index, self.in_shard, self.count = None, 0, 0, 0
        self.masked, self.mask = masked, None

    def write(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        while len(ids):
            if self.file is None:
                self._start()
            room = self.shard_tokens - self.in_shard
            part, ids = ids[:room], ids[room:]
            part.astype(self.dtype, copy=False).tofile(self.file)
            if self.masked:
                mask[:room].tofile(self.mask)
                mask = mask[room:]
            self.in_shard += len(part)
            self.count += len(part)
            if self.in_shard == self.shard_tokens:
                self._finish()

    def _start(self) -> None:
        path = self.folder / f"{SHARD_PREFIX}_{self.split}_{self.index:06d}.bin"
        self.file = open(path, "wb")
        self.file.write(shard_header(0, self.dtype))
        if self.masked:
            self.mask = open(mask_path(path), "wb")

    def _finish(self) -> None:
        self.file.seek(0)
        self.file.write(shard_header(self.in_shard, self.dtype))
        self.file.close()
        if self.masked:
            self.mask.close()
        self.file, self.mask, self.index, self.in_shard = None, None, self.index + 1, 0

    def close(self) -> int:
        if self.file is None and self.index == 0:
            self._start()  # nothing came: the split still gets its (empty) shard
        if self.file is not None:
            self._finish()
        return self.count


# ---------------------------------------------------------------------------------------------------
# a BPE trained on the corpus, and what each tokenizer spends on its val split


def train_bpe(src: Source, vocab_size: int, val_fraction: float, num_threads: int, log=print) -> tuple:
    """`train_bpe_tokenizer` on the train split of `src` (routed as `prepare` routes it: no val text reaches the
    trainer), read a segment at a time, with a progress bar over its bytes; tokenizers counts the words in
    `num_threads` threads. Returns (the tokenizer, {"seconds", "bytes", "threads"}: what its training took).

    The segments are cut where GPT-2's pre-tokenizer would end a word anyway (`newline_cut`), so the word
    counts are those of the whole documents."""
    total = round(src.bytes * (1 - val_fraction)) if src.bytes else None  # the train split's share, about
    bar = tqdm(
        total=total, desc=f"training bpe:{vocab_size} on the train split", unit="B", unit_scale=True, mininterval=1
    )

    read = 0  # bytes (the bar's own count stays 0 when tqdm is disabled)

    def texts():
        nonlocal read
        for split, blocks, _ in route(src, val_fraction):
            if split == "train":
                for text in segments(blocks, SEGMENT_CHARS, "newline"):
                    yield text
                    size = utf8_bytes(text)
                    read += size
                    bar.update(size)
        bar.total = read  # the count is done; tokenizers now computes the merges
        bar.set_postfix_str("computing merges")

    started = time.perf_counter()
    with bar, tokenizers_threads(num_threads):
        tokenizer = train_bpe_tokenizer(texts(), vocab_size)
    training = {"seconds": time.perf_counter() - started, "bytes": read, "threads": num_threads}
    short = f" ({vocab_size:,} asked: the text has no more pairs to merge)" if len(tokenizer) < vocab_size else ""
    log(
        f"bpe:{vocab_size}: {len(tokenizer):,} tokens{short}, trained on {read / 1e6:,.1f} MB of the train split in "
        f"{training['seconds']:.1f} s ({num_threads} thread{'s' if num_threads > 1 else ''})"
    )
    return tokenizer, training


OTHER_TOKENIZERS = {"gpt2": "GPT-2 BPE", "char": "a char vocabulary"}  # what every tokenizer is compared with


def tokens_per_byte_line(label: str, per_byte: dict[str, float]) -> str:
    """'val: 0.262 tokens/byte with bpe:8192; GPT-2 BPE would spend 0.451, a char vocabulary 0.981'."""
    others = [(OTHER_TOKENIZERS[name], value) for name, value in per_byte.items() if name != label]
    line = f"val: {per_byte[label]:.3f} tokens/byte with {label}"
    if others:
        (first, value), *rest = others
        line += f"; {first} would spend {value:.3f}" + "".join(f", {other} {v:.3f}" for other, v in rest)
    return line


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
    messages_column: str = "messages",
) -> dict:
    """Tokenize `source` (`open_source`: a text file, a folder of text files, a `datasets` data set) into
    nanoGPT's layout, or into llm.c's shards of `shard_tokens` tokens. `tokenizer`: "char" (vocabulary from
    the text, meta.pkl written; a first pass reads the source for its characters), "gpt2", "bpe:VOCAB" (a
    byte-level BPE of VOCAB tokens trained on the train split, `train_bpe`, saved in out_dir/tokenizer), or a
    tokenizer folder / meta.pkl.

    A data set with `messages_column` and no `text_column` is a conversation set: `tokenizer` is the MODEL to
    fine-tune ("gpt2", a model or tokenizer folder), which gets the chat format (hf_nanogpt/chat.py) and is saved
    in out_dir/tokenizer; each conversation is a document, encoded by the chat template, and each token file
    gets its loss mask beside it (tokens.py). A bad row (conversations.py's BAD_ROWS, a conversation longer than
    the MODEL's context among them) is left out, counted and reported; if every row is bad, ValueError.

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
    only before newlines). Memory does not grow with the corpus.

    Each split's UTF-8 bytes are counted, and the val split's tokens per byte logged and recorded in
    data_info.json: this tokenizer's, and what GPT-2's BPE and a char vocabulary would spend on the same text
    (the tokens `prepare` would write with them; GPT-2's counted in the workers). Returns data_info.json's
    contents and each split's token count."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    num_proc = (os.cpu_count() or 1) if num_proc is None else num_proc
    if num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}.")
    budget = parse_size(max_memory, "max_memory")
    bpe_vocab = bpe_vocab_size(tokenizer)
    if shard_tokens is not None:
        shard_tokens = parse_size(shard_tokens, "shard_tokens")
        if not 0 < shard_tokens < 2**31:
            raise ValueError(
                f"shard_tokens must be in [1, 2^31) (the header's count is an int32), got {shard_tokens:,}."
            )
    check_apart(out_dir, source, "OUT_DIR", "INPUT")
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: pass --overwrite to replace it.")
    src = open_source(source, text_column, split, dataset_config, messages_column)
    training = None  # what training a bpe:VOCAB took
    if src.chat:
        tok = chat_tokenizer(tokenizer)
    elif tokenizer == "char":
        tok = char_tokenizer(characters(src))
    elif bpe_vocab is not None:
        tok, training = train_bpe(src, bpe_vocab, val_fraction, num_proc, log)
    else:
        tok = load_tokenizer(tokenizer)
    stoi = char_vocab(tok)
    label = "char" if stoi else str(tokenizer)
    dtype = np.dtype(np.uint16 if len(tok) <= 2**16 else np.uint32)
    in_flight = 2 * num_proc
    piece_chars = min(MAX_PIECE_CHARS, max(MIN_PIECE_CHARS, budget // (in_flight * BYTES_PER_CHAR)))
    if src.chat:
        max_tokens, context = context_tokens(tokenizer, tok)
        encoder = ChatEncoder(tok, dtype, max_tokens)
        work = conversation_pieces(route(src, val_fraction), piece_chars)
        bad, conversations, taught = BadRows(), dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    else:
        encoder = Encoder(tok, tokenizer, dtype, count_gpt2=label != "gpt2")
        # char level may cut anywhere; its GPT-2 count, of the same segments, needs cuts exact for GPT-2 too
        rule = cut_rule(tok)
        work = pieces(route(src, val_fraction), "newline" if rule == "anywhere" else rule, piece_chars)
    started, tokens = time.perf_counter(), 0
    text_bytes, val_chars, val_gpt2 = dict.fromkeys(SPLITS, 0), 0, 0
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writers = {
            name: ShardWriter(tmp, name, shard_tokens, dtype, src.chat)
            if shard_tokens
            else BinWriter(tmp / f"{name}.bin", src.chat)
            for name in SPLITS
        }
        try:
            with tqdm(
                total=src.count if src.chat else src.bytes,
                desc=f"encoding ({encoder.name}, {num_proc} process{'es' if num_proc > 1 else ''})",
                unit=" rows" if src.chat else "B",
                unit_scale=True,
                mininterval=1.0,
            ) as bar:
                for done in encode_pieces(work, encoder, num_proc, in_flight):
                    writers[done.split].write(done.ids, done.mask)
                    tokens, text_bytes[done.split] = tokens + len(done.ids), text_bytes[done.split] + done.bytes
                    if done.split == "val":
                        val_chars, val_gpt2 = val_chars + done.chars, val_gpt2 + (done.gpt2_tokens or 0)
                    if src.chat:
                        bad.add(done.bad)
                        conversations[done.split] += done.conversations
                        taught[done.split] += int(done.mask.sum())
                    bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
                    bar.update(done.conversations + len(done.bad) if src.chat else done.bytes)
        finally:
            counts = {name: writer.close() for name, writer in writers.items()}
        if src.chat:
            too_long = f"{max_tokens:,} tokens ({context})" if max_tokens else ""
            if not sum(conversations.values()) and not bad.total:
                raise ValueError(f"{source}: no rows in its {messages_column!r} column, nothing to train on.")
            if not sum(conversations.values()):
                reasons = "\n".join(bad.lines(too_long))
                raise ValueError(
                    f"{source}: every one of its {bad.total:,} rows is bad, nothing to train on:\n{reasons}\n"
                    f"A row's {messages_column!r} is a list of {{\"role\": ..., \"content\": ...}}, roles "
                    f"{', '.join(ROLES)}, with at least one assistant turn (docs/chat.md)."
                )
        info = {
            "dtype": dtype.name,
            "vocab_size": len(tok),
            "tokenizer": label,
            "source": str(source),
            "bytes": text_bytes,
        }
        # of conversations, tokens per byte would count the template's markers and role names against the
        # contents' bytes, and a char vocabulary (one of those it compares with) cannot write one: not measured
        if not src.chat:
            # the tokens written, then the others' (GPT-2's counted unless it wrote them)
            val_tokens = {label: counts["val"]}
            val_tokens.setdefault("gpt2", val_gpt2)
            val_tokens.setdefault("char", val_chars)
            val_bytes = text_bytes["val"]
            info["val_tokens_per_byte"] = {name: n / val_bytes for name, n in val_tokens.items()} if val_bytes else {}
        if src.chat:
            info.update(
                chat=True,
                chat_format="chatml",
                messages_column=messages_column,
                conversations=conversations,
                taught_tokens=taught,
                max_tokens=max_tokens,
                max_tokens_from=context,
                bad_rows=bad.counts,
                first_bad_rows={reason: rows for reason, rows in bad.first.items() if rows},
            )
        if shard_tokens:
            info.update(layout="shards", shard_tokens=shard_tokens)
        if stoi is not None:
            write_meta_pkl(tmp / "meta.pkl", stoi)
        if bpe_vocab is not None or src.chat:
            tok.save_pretrained(tmp / TOKENIZER_DIR)
            info.update(tokenizer_dir=TOKENIZER_DIR)
        if bpe_vocab is not None:
            info.update(tokenizer_training=training)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    seconds, total_bytes = time.perf_counter() - started, sum(text_bytes.values())
    shards = f", shards of {shard_tokens:,}" if shard_tokens else ""
    log(
        f"{src.description}: {counts['train']:,} train and {counts['val']:,} val tokens "
        f"({dtype.name}{shards}), vocab {len(tok)} "
        f"-> {out_dir} ({total_bytes / 1e6:,.1f} MB in {seconds:.1f} s, "
        f"{total_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s; "
        f"{num_proc} process{'es' if num_proc > 1 else ''}, {encoder.name})"
    )
    if src.chat:
        share = sum(taught.values()) / max(tokens, 1)
        log(
            f"conversations: {conversations['train']:,} train and {conversations['val']:,} val, {bad.total:,} bad "
            f"row{'' if bad.total == 1 else 's'} skipped; {share:.1%} of the tokens are taught (mask 1: the replies "
            f"and their <|im_end|>)"
        )
        for line in bad.lines(too_long):
            log(line)
    if info.get("val_tokens_per_byte"):
        log(tokens_per_byte_line(label, info["val_tokens_per_byte"]))
    return {**info, **counts}


__all__ = ["BinWriter", "ShardWriter", "parse_size", "prepare", "tokens_per_byte_line", "train_bpe"]
