"""Text -> ids for `prepare`, at any corpus size: documents cut into segments only where encoding the segments
apart gives the ids of encoding the text whole (`cut_rule`), gathered into pieces, and encoded in worker
processes a piece at a time, in order (`encode_pieces`), by tiktoken or the tokenizers library (`Encoder`).
The environment's say over tokenizers' own threads is set here too: off while worker processes encode
(`one_thread_per_process`), on while a BPE trains (`tokenizers_threads`).
"""

import contextlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..tokenization import (
    CHAR_UNKNOWN,
    GPT2_EOS,
    byte_decoder,
    char_vocab,
    eot_id,
    gpt2_tokenizer,
    gpt2_vocab,
    is_gpt2_bpe,
)

# text encoded in one call: tokenizers is fastest on pieces of 10-20k characters (BENCHMARKS.md)
SEGMENT_CHARS = 1 << 14
ENCODE_BATCH = 64  # segments per encode_batch_fast call in a worker

# ---------------------------------------------------------------------------------------------------
# cutting text where encoding it in parts gives the ids of encoding it whole


def cut_rule(tokenizer) -> str:
    """How a text may be cut for this tokenizer: "anywhere" (char level: a character is a token), "newline"
    (GPT-2's byte-level BPE, see `newline_cut`), or "whole" (any other tokenizer: documents are encoded whole)."""
    if char_vocab(tokenizer) is not None:
        return "anywhere"
    return "newline" if is_gpt2_bpe(tokenizer) else "whole"


def newline_cut(text: str, lo: int, target: int, scanned: int) -> int | None:
    """A cut in text[lo:] before a "\\n" that follows a character other than white space: the last one at
    or before `target`, else the first after it (from `scanned`, where the last search stopped), else None.

    GPT-2's pre-tokenizer ('s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+) ends a token
    there (no pattern goes on from a non-space into a newline), and what starts at the newline is matched
    as it would be in a text of its own (the patterns look ahead, never behind). A cut inside or at the end
    of a run of white space is not exact: \\s+(?!\\S) splits a run by what follows it ("\\n\\n" then " b" in
    "\\n\\n b", but "\\n", "\\n" then "a" in "\\n\\na")."""
    i = text.rfind("\n", lo + 1, target + 1)
    while i > lo:
        if not text[i - 1].isspace():  # str.isspace holds for every character the regex's \s matches
            return i
        i = text.rfind("\n", lo + 1, i)
    i = text.find("\n", max(scanned, target + 1))
    while i != -1:
        if not text[i - 1].isspace():
            return i
        i = text.find("\n", i + 1)
    return None


CUTS = {"anywhere": lambda text, lo, target, scanned: target, "newline": newline_cut}


def segments(blocks: Iterable[str], size: int, rule: str) -> Iterator[str]:
    """The text of `blocks` in segments of about `size` characters, cut only where `rule` allows (longer
    where the text has no cut point for a while). At least one segment, which may be empty."""
    if rule == "whole":
        yield "".join(blocks)
        return
    buf, scanned, emitted = "", 0, False
    for block in blocks:
        buf += block
        start = 0
        while len(buf) - start > size:
            cut = CUTS[rule](buf, start, start + size, scanned)
            if cut is None:  # no cut point yet: read on, and search on from here
                scanned = len(buf)
                break
            yield buf[start:cut]
            start, scanned, emitted = cut, 0, True
        buf, scanned = buf[start:], max(scanned - start, 0)
    if buf or not emitted:
        yield buf


@dataclass
class Piece:
    """Segments of one split, encoded together in a worker: (text, an <|endoftext|> after it?) each."""

    split: str
    segments: list[tuple[str, bool]] = field(default_factory=list)
    chars: int = 0


def pieces(routed: Iterable[tuple[str, Iterable[str], bool]], rule: str, piece_chars: int) -> Iterator[Piece]:
    """The routed documents' segments gathered into pieces of about `piece_chars` characters of one split;
    the last segment of each of several documents is marked for an <|endoftext|> after it."""
    filling: dict[str, Piece] = {}
    for split, blocks, several in routed:
        piece = filling.setdefault(split, Piece(split))
        for text, last in with_last(segments(blocks, min(SEGMENT_CHARS, piece_chars), rule)):
            piece.segments.append((text, several and last))
            piece.chars += len(text)
            if piece.chars >= piece_chars:
                yield piece
                piece = filling[split] = Piece(split)
    yield from (piece for piece in filling.values() if piece.segments)


def with_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, is it the last one?) for each of one or more items."""
    items = iter(items)
    previous = next(items)
    for item in items:
        yield previous, False
        previous = item
    yield previous, True


# ---------------------------------------------------------------------------------------------------
# encoding, in worker processes


def tiktoken_installed() -> bool:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, built from the bundled files (nanoGPT's prepare.py calls
    tiktoken.get_encoding("gpt2"), which downloads the same two files)."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    to_byte, vocab = byte_decoder(), gpt2_vocab()
    ranks = {
        bytes(to_byte[c] for c in token): rank for token, rank in vocab.items() if token != GPT2_EOS
    }  # ids are merge ranks
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={GPT2_EOS: vocab[GPT2_EOS]}
    )


def utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass
class Encoded:
    """A piece's ids, and what its text measures: UTF-8 bytes, characters and, where counted, GPT-2 tokens; for
    conversations, also their loss mask and bad rows."""

    split: str
    ids: np.ndarray
    bytes: int
    chars: int
    gpt2_tokens: int | None  # the tokens `prepare --tokenizer gpt2` writes for the same text (<|endoftext|>s too)
    # conversations (conversations.py): 1 where the model learns to write the token; each bad row's (reason, row);
    # how many conversations the ids hold
    mask: np.ndarray | None = None
    bad: list[tuple[str, int]] = field(default_factory=list)
    conversations: int = 0


class Encoder:
    """Pieces -> ids, built alike in every process from what pickles: the tokenizer's JSON for the
    tokenizers library, or, for the bundled GPT-2 BPE where tiktoken is installed, tiktoken (nanoGPT's own
    encoder: the same ids, several times faster, BENCHMARKS.md). Text is encoded as ordinary text: an
    "<|endoftext|>" inside a document is text, as with tiktoken's encode_ordinary in nanoGPT's prepare.py.

    `count_gpt2`: the val pieces are also encoded with the bundled GPT-2 BPE, and only counted (prepare's
    tokens-per-byte comparison, measured in the workers alongside the encoding)."""

    def __init__(self, tokenizer, spec, dtype: np.dtype, count_gpt2: bool = False):
        self.json = tokenizer.backend_tokenizer.to_str()
        self.eot = eot_id(tokenizer)
        self.dtype = dtype
        self.name = "tiktoken" if str(spec) == "gpt2" and tiktoken_installed() else "tokenizers"
        self.backend = None
        self.gpt2 = Encoder(gpt2_tokenizer(), "gpt2", np.dtype(np.uint16)) if count_gpt2 else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "backend": None}  # each process builds its own

    def start(self) -> None:
        if self.name == "tiktoken":
            self.backend = tiktoken_gpt2()
        else:
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(self.json)
            self.backend.encode_special_tokens = True  # special tokens in the text are text
        if self.gpt2 is not None:
            self.gpt2.start()

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.name == "tiktoken":
            return [self.backend.encode_ordinary(text) for text in texts]
        try:
            return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        except Exception as err:  # tokenizers raises a bare Exception for characters outside a char-level vocabulary
            if CHAR_UNKNOWN not in str(err):
                raise
            missing = sorted(set("".join(texts)) - set(self.backend.get_vocab()))
            raise ValueError(
                f"the text has characters the char-level vocabulary does not have: {''.join(missing)!r}; "
                f"use --tokenizer char to build the vocabulary from this text."
            ) from None

    def __call__(self, piece: Piece) -> Encoded:
        """The ids of the piece's segments, an <|endoftext|> after each marked one."""
        if self.backend is None:
            self.start()
        count_gpt2 = self.gpt2 is not None and piece.split == "val"
        ids, nbytes, gpt2_tokens = [], 0, 0
        for i in range(0, len(piece.segments), ENCODE_BATCH):
            batch = piece.segments[i : i + ENCODE_BATCH]
            texts = [text for text, _ in batch]
            for (text, eot), encoded in zip(batch, self.encode(texts)):
                ids.extend(encoded)
                if eot and self.eot is not None:
                    ids.append(self.eot)
                nbytes += utf8_bytes(text)
            if count_gpt2:
                gpt2_tokens += sum(map(len, self.gpt2.encode(texts))) + sum(eot for _, eot in batch)
        return Encoded(
            piece.split, np.array(ids, dtype=self.dtype), nbytes, piece.chars, gpt2_tokens if count_gpt2 else None
        )


_worker_encoder: Encoder | None = None  # in a worker process


def _start_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    encoder.start()


def _encode_in_worker(piece: Piece) -> Encoded:
    return _worker_encoder(piece)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Environment variables set for the duration, then as they were (unset where they were unset)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def one_thread_per_process():
    """tokenizers' own threads off (it reads TOKENIZERS_PARALLELISM at each call, and in a child at fork):
    num_proc processes use num_proc cores, no more, and a forked worker does not warn about threads."""
    return environment(TOKENIZERS_PARALLELISM="false")


def tokenizers_threads(num_threads: int):
    """tokenizers' own threads on, `num_threads` of them, for a BPE's training (one process). Its thread pool
    reads RAYON_NUM_THREADS once, when first used in the process: a pool already running keeps its size."""
    return environment(TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=str(num_threads))


def worker_pool(num_proc: int, encoder: Encoder):
    """`num_proc` processes, forked where the platform is Linux: a worker starts in milliseconds and shares
    the parent's pages, where spawn and forkserver import torch and transformers again in each
    (BENCHMARKS.md). The workers run only the tokenizer, never torch."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(num_proc, initializer=_start_worker, initargs=(encoder,))


def encode_pieces(work: Iterable[Piece], encoder: Encoder, num_proc: int, in_flight: int) -> Iterator[Encoded]:
    """Each piece encoded, in order: here (num_proc 1), or in `num_proc` worker processes with at most
    `in_flight` pieces handed out at once (Pool.imap would read the whole input ahead)."""
    if num_proc == 1:
        with one_thread_per_process():
            yield from map(encoder, work)
        return
    with one_thread_per_process(), worker_pool(num_proc, encoder) as pool:
        waiting = deque()
        for piece in work:
            waiting.append(pool.apply_async(_encode_in_worker, (piece,)))
            if len(waiting) >= in_flight:
                yield waiting.popleft().get()
        while waiting:
            yield waiting.popleft().get()


__all__ = [
    "Encoded",
    "Encoder",
    "cut_rule",
    "encode_pieces",
    "newline_cut",
    "pieces",
    "segments",
    "tokenizers_threads",
    "utf8_bytes",
]
