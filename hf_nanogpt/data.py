"""Token data for training, at any corpus size: nanoGPT's layout and llm.c's shards, read by the trainer and
written by `hf-nanogpt prepare`.

    prepare("input.txt", "data/shakespeare_char", tokenizer="char")       # what nanoGPT's prepare.py scripts do
    prepare("HuggingFaceFW/fineweb", "data/fineweb10B", tokenizer="gpt2", dataset_config="sample-10BT",
            val_fraction=0.01, shard_tokens="100M")                         # llm.c's fineweb.py, streamed
    data = TokenData("data/shakespeare_char")                               # what train.py reads (either layout)

Two layouts:
- nanoGPT's: train.bin and val.bin, the ids back to back, uint16 (uint32 past 65,536 tokens, recorded in
  data_info.json; nanoGPT's own folders have none and are read as uint16), and meta.pkl for char level.
- llm.c's shards, which modded-nanogpt reads too: `*_train_*.bin` and `*_val_*.bin`, each a header of 256
  int32 (magic, version, token count) and then the tokens (SHARD_FORMATS). Their FineWeb folders are read as
  they are.

`prepare` streams: documents are read a block at a time, cut into segments only where encoding the segments
apart gives the ids of encoding the text whole (`cut_rule`), encoded in worker processes a piece at a time,
and written as the pieces come back, in order. Memory is bounded by the pieces in flight (`max_memory`),
not by the corpus.
"""

import contextlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .saving import atomic_output_dir, check_apart
from .tokenization import CHAR_UNKNOWN, GPT2_BPE_DIR, GPT2_EOS, char_tokenizer, char_vocab, load_tokenizer, read_meta_pkl, write_meta_pkl

INFO_FILE = "data_info.json"
SPLITS = ("train", "val")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".text", ".rst")
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}  # datasets' loaders
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # datasets reads these compressed data files as they are

# llm.c's token shards (dev/data/data_common.py): 256 int32 (magic, version, token count, then zeros), then
# the tokens. magic -> (version, token dtype): GPT-2's vocabulary in uint16, Llama 3's in uint32.
SHARD_HEADER_INTS = 256
SHARD_FORMATS = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}
SHARD_PREFIX = "shard"  # our shards: shard_train_000000.bin, ... (llm.c's are fineweb_train_000001.bin, ...)

# how `prepare` cuts its work (see prepare's docstring for the memory bound)
READ_CHARS = 1 << 20  # characters per read from a text file
SEGMENT_CHARS = 1 << 14  # text encoded in one call: tokenizers is fastest on pieces of 10-20k characters (BENCHMARKS.md)
MAX_PIECE_CHARS = 1 << 22  # text handed to a worker at once
MIN_PIECE_CHARS = 1 << 12
BYTES_PER_CHAR = 8  # memory a character in flight costs: its text, its pickled copy, its ids (measured, BENCHMARKS.md)
ENCODE_BATCH = 64  # segments per encode_batch_fast call in a worker


# ---------------------------------------------------------------------------------------------------
# shards


def shard_header(count: int, dtype: np.dtype) -> bytes:
    """The 1,024-byte header of a shard holding `count` tokens of `dtype`."""
    magic = next(m for m, (_, d) in SHARD_FORMATS.items() if d == dtype)
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = magic, SHARD_FORMATS[magic][0], count
    return header.tobytes()


def write_shard(path: str | os.PathLike, ids, dtype=np.uint16) -> None:
    """One shard file: the header, then `ids` as uint16 (GPT-2's format) or uint32 (Llama 3's)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    ids = np.asarray(ids, dtype=dtype)
    with open(path, "wb") as f:
        f.write(shard_header(len(ids), dtype))
        ids.tofile(f)


def read_shard(path: Path) -> np.ndarray:
    """A shard's tokens, memory-mapped, once its header (magic, version, count) agrees with the file's size."""
    size = path.stat().st_size
    redo = "Write it again (`hf-nanogpt prepare ... --shard_tokens N`, or llm.c's dev/data/fineweb.py)."
    if size < SHARD_HEADER_INTS * 4:
        raise ValueError(f"{path}: {size} bytes, shorter than the {SHARD_HEADER_INTS * 4:,}-byte header of a token shard: "
                         f"truncated? {redo}")
    magic, version, count = (int(v) for v in np.fromfile(path, dtype="<i4", count=3))
    if magic not in SHARD_FORMATS:
        expected = " or ".join(f"{m} ({d.name} tokens)" for m, (_, d) in SHARD_FORMATS.items())
        raise ValueError(f"{path}: magic number {magic}, expected {expected}: not a token shard in llm.c's format.")
    expected_version, dtype = SHARD_FORMATS[magic]
    if version != expected_version:
        raise ValueError(f"{path}: version {version}, expected {expected_version} with magic {magic}. {redo}")
    expected_size = SHARD_HEADER_INTS * 4 + count * dtype.itemsize
    if count < 0 or size != expected_size:
        how = "truncated" if size < expected_size else "longer than its tokens"
        raise ValueError(f"{path}: {size:,} bytes, but its header says {count:,} tokens ({expected_size:,} bytes with the "
                         f"header): {how}. {redo}")
    if count == 0:
        return np.zeros(0, dtype)  # np.memmap cannot map nothing
    return np.memmap(path, dtype=dtype, mode="r", offset=SHARD_HEADER_INTS * 4, shape=(count,))


# ---------------------------------------------------------------------------------------------------
# reading (the trainer)


class TokenData:
    """A prepared data folder in either layout: each split as its token arrays (memory-mapped: one for
    train.bin / val.bin, one a shard), the vocabulary size, and its tokenizer.

    Windows are drawn over all of a split's arrays at once: a window start is a number in [0, total), the
    total of every array's window starts (an array of n tokens has n - block_size), mapped to its array and
    offset. One array (train.bin) draws exactly nanoGPT's windows; a window never crosses a shard's end."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir)
        info = json.loads((self.dir / INFO_FILE).read_text()) if (self.dir / INFO_FILE).is_file() else {}
        self.meta = read_meta_pkl(self.dir / "meta.pkl") if (self.dir / "meta.pkl").is_file() else None
        self.vocab_size = self.meta["vocab_size"] if self.meta else info.get("vocab_size")
        self.tokenizer_spec = info.get("tokenizer")
        bins = {name: self.dir / f"{name}.bin" for name in SPLITS}
        shard_files = {name: sorted(self.dir.glob(f"*_{name}_*.bin")) for name in SPLITS}
        if all(path.is_file() for path in bins.values()):
            self.layout = "nanogpt"
            self.dtype = np.dtype(info.get("dtype", "uint16"))
            self.shards = {name: [np.memmap(path, dtype=self.dtype, mode="r")] for name, path in bins.items()}
        elif all(shard_files.values()):
            self.layout = "shards"
            self.shards = {name: [read_shard(path) for path in files] for name, files in shard_files.items()}
            dtypes = {ids.dtype for parts in self.shards.values() for ids in parts}
            if len(dtypes) > 1:
                raise ValueError(f"{self.dir}: shards of different token types ({sorted(d.name for d in dtypes)}); one folder "
                                 f"holds one tokenizer's ids.")
            self.dtype = dtypes.pop()
        else:
            missing = [path.name for path in bins.values() if not path.is_file()]
            raise FileNotFoundError(
                f"{self.dir}: missing {missing}, and no token shards (*_train_*.bin and *_val_*.bin) either. Prepare "
                f"the data first: `hf-nanogpt prepare INPUT {self.dir} --tokenizer char|gpt2` (or nanoGPT's prepare.py, "
                f"or llm.c's dev/data/fineweb.py)."
            )

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """Each split's ids as one array: train.bin / val.bin as mapped; shards joined in memory (small data, tests)."""
        return {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in self.shards.items()}

    def tokenizer(self):
        """meta.pkl -> char level; data_info.json's tokenizer; else GPT-2 BPE, as nanoGPT and llm.c assume."""
        if self.meta is not None:
            return char_tokenizer(self.meta["stoi"])
        return load_tokenizer(self.tokenizer_spec or "gpt2")

    def window_counts(self, split: str, block_size: int) -> np.ndarray:
        """How many windows of block_size + 1 ids start in each of the split's arrays."""
        return np.array([max(len(ids) - block_size, 0) for ids in self.shards[split]], dtype=np.int64)

    def check_block_size(self, block_size: int) -> None:
        for name, parts in self.shards.items():
            longest = max(len(ids) for ids in parts)
            if longest <= block_size + 1:
                where = self.dir / f"{name}.bin" if self.layout == "nanogpt" else f"{self.dir}: the longest {name} shard"
                raise ValueError(f"{where} holds {longest} tokens: too few for block_size {block_size}.")

    def windows(self, split: str, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch for given window starts (token offsets, for one array; numbers over all the
        split's window starts, for shards): x = ids[i : i+T], y = ids[i+1 : i+1+T]."""
        counts = self.window_counts(split, block_size)
        ends = np.cumsum(counts)
        starts = starts.numpy()
        which = np.searchsorted(ends, starts, side="right") if len(counts) > 1 else np.zeros(len(starts), dtype=np.int64)
        offsets = starts - (ends - counts)[which]
        # one gather per array: rows of block_size + 1 ids, then x and y as the two overlapping views
        rows = np.empty((len(starts), block_size + 1), dtype=np.int64)
        for i in np.unique(which):
            chosen = which == i
            rows[chosen] = self.shards[split][i][offsets[chosen, None] + np.arange(block_size + 1)]
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def random_starts(self, split: str, block_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` window starts drawn uniformly over all of the split's windows."""
        return torch.randint(int(self.window_counts(split, block_size).sum()), (count,), generator=generator)

    def random_batch(self, split: str, block_size: int, batch_size: int, generator: torch.Generator,
                     world: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch: random windows from `generator`, drawn for all `world` processes at once
        (so every process advances the generator alike), then process `rank`'s share of `batch_size`."""
        starts = self.random_starts(split, block_size, batch_size * world, generator)
        return self.windows(split, starts[rank * batch_size : (rank + 1) * batch_size], block_size)


# ---------------------------------------------------------------------------------------------------
# sources: documents, each read a block at a time


@dataclass
class Source:
    """Where documents come from. `documents()` yields each document as an iterable of text blocks (a new
    pass each call); `count` is their number where it is known before reading them (None: a stream)."""

    documents: Callable[[], Iterator[Iterable[str]]]
    count: int | None
    description: str
    bytes: int | None = None  # the text's size, for the progress bar, where known


def read_blocks(path: Path) -> Iterator[str]:
    """A UTF-8 text file a block at a time, newlines translated as Path.read_text translates them."""
    with open(path, encoding="utf-8") as f:
        while block := f.read(READ_CHARS):
            yield block


def data_file_builder(path: Path) -> str | None:
    """The `datasets` loader for a data file (data.jsonl, part-0.parquet, dump.json.gz, ...), else None."""
    suffixes = path.suffixes[:-1] if path.suffix in COMPRESSIONS else path.suffixes
    return DATA_FILE_BUILDERS.get(suffixes[-1]) if suffixes else None


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def open_source(source: str | os.PathLike, text_column: str = "text", split: str = "train",
                dataset_config: str | None = None) -> Source:
    """A text file (one document); a folder of text files (one document each, sorted by path); else a
    `datasets` data set (`dataset_source`)."""
    path = Path(source)
    if dataset_config is not None and path.exists():
        raise ValueError(f"--dataset_config {dataset_config!r} names a configuration of a Hub data set; {source} is a local path.")
    if path.is_file() and data_file_builder(path) is None:
        return Source(lambda: iter([read_blocks(path)]), 1, str(path), path.stat().st_size)
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if files:
            return Source(lambda: (read_blocks(p) for p in files), len(files), f"{len(files)} files under {path}",
                          sum(p.stat().st_size for p in files))
    return dataset_source(source, text_column, split, dataset_config)


def dataset_source(source: str | os.PathLike, text_column: str, split: str, dataset_config: str | None) -> Source:
    """A saved data set folder (load_from_disk: its length is known), local data files (a file or a folder
    of .json/.jsonl/.parquet/.csv/.arrow files) or a Hub name (`dataset_config`: its configuration, such as
    FineWeb's sample-10BT); the last two are streamed (streaming=True), nothing is downloaded or converted
    first. Rows are read in batches of the text column only."""
    try:
        import datasets
    except ImportError as err:
        raise FileNotFoundError(f"{source}: not a text file or folder; to read a `datasets` data set, pip install datasets.") from err
    path = Path(source)
    files = [path] if path.is_file() else []
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_file_builder(p))
        if not files:
            raise FileNotFoundError(f"{path}: no text files ({', '.join(TEXT_SUFFIXES)}), data files "
                                    f"({', '.join(DATA_FILE_BUILDERS)}) or saved data set found.")
    builders = {data_file_builder(p) for p in files}
    if len(builders) > 1:
        raise ValueError(f"{path}: data files of several kinds ({sorted(builders)}); keep one kind in the folder.")
    try:
        if files:
            ds = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train", streaming=True)
        elif path.is_dir():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(str(source), name=dataset_config, split=split, streaming=True)
    except Exception as err:
        raise FileNotFoundError(f"{source}: not a text file, a folder of text files, or a loadable data set ({err}).") from err
    if ds.column_names is not None and text_column not in ds.column_names:  # a stream may know its columns only once read
        raise ValueError(f"{source}: no column {text_column!r} (columns: {ds.column_names}); pass --text_column.")
    ds = ds.select_columns([text_column])

    def documents() -> Iterator[tuple[str]]:
        for batch in ds.iter(batch_size=256):
            if text_column not in batch:
                raise ValueError(f"{source}: no column {text_column!r} (columns: {sorted(batch)}); pass --text_column.")
            for text in batch[text_column]:
                if not isinstance(text, str):
                    raise ValueError(f"{source}: a row's {text_column!r} is {type(text).__name__}, not text.")
                yield (text,)

    count = len(ds) if isinstance(ds, datasets.Dataset) else None
    return Source(documents, count, f"data set {source} ({f'{count:,} rows' if count is not None else 'streamed'})")


def characters(src: Source) -> set[str]:
    """Every character the source holds (a pass over it: a char-level vocabulary is known before encoding)."""
    chars = set()
    for document in src.documents():
        for block in document:
            chars.update(block)
    return chars


# ---------------------------------------------------------------------------------------------------
# the train/val split


def split_at(blocks: Iterator[str], n: int) -> tuple[Iterator[str], Iterator[str]]:
    """Blocks of text as two block streams, its first n characters and the rest (read the first first)."""
    rest = []

    def head():
        left = n
        for block in blocks:
            if len(block) >= left:
                yield block[:left]
                rest.append(block[left:])
                return
            left -= len(block)
            yield block

    def tail():
        yield from rest
        yield from blocks

    return head(), tail()


def route(src: Source, val_fraction: float) -> Iterator[tuple[str, Iterable[str], bool]]:
    """(split, a document's blocks, one of several documents?) in reading order, by the rules `prepare` states."""
    if src.count == 1:  # one text: by characters (a first pass counts them)
        n = int(sum(map(len, next(src.documents()))) * (1 - val_fraction))
        train, val = split_at(iter(next(src.documents())), n)
        yield "train", train, False
        yield "val", val, False
    elif src.count is not None:  # counted documents: the first ones train
        n = max(1, min(src.count - 1, int(src.count * (1 - val_fraction))))
        for i, document in enumerate(src.documents()):
            yield ("train" if i < n else "val"), document, True
    else:  # a stream: document i validates when floor((i + 1) f) > floor(i f), every (1/f)-th, spread evenly
        for i, document in enumerate(src.documents()):
            yield ("val" if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction) else "train"), document, True


# ---------------------------------------------------------------------------------------------------
# cutting text where encoding it in parts gives the ids of encoding it whole


def cut_rule(tokenizer) -> str:
    """How a text may be cut for this tokenizer: "anywhere" (char level: a character is a token), "newline"
    (GPT-2's byte-level BPE, see `newline_cut`), or "whole" (any other tokenizer: documents are encoded whole)."""
    if char_vocab(tokenizer) is not None:
        return "anywhere"
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    gpt2_like = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    return "newline" if gpt2_like and spec.get("normalizer") is None else "whole"


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
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = json.loads((GPT2_BPE_DIR / "encoder.json").read_text(encoding="utf-8"))
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in vocab.items() if token != GPT2_EOS}  # ids are merge ranks
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={GPT2_EOS: vocab[GPT2_EOS]})


class Encoder:
    """Segments -> ids, built alike in every process from what pickles: the tokenizer's JSON for the
    tokenizers library, or, for the bundled GPT-2 BPE where tiktoken is installed, tiktoken (nanoGPT's own
    encoder: the same ids, several times faster, BENCHMARKS.md). Text is encoded as ordinary text: an
    "<|endoftext|>" inside a document is text, as with tiktoken's encode_ordinary in nanoGPT's prepare.py."""

    def __init__(self, tokenizer, spec, dtype: np.dtype):
        self.json = tokenizer.backend_tokenizer.to_str()
        self.eot = tokenizer.convert_tokens_to_ids(GPT2_EOS) if GPT2_EOS in tokenizer.get_vocab() else None
        self.dtype = dtype
        self.name = "tiktoken" if str(spec) == "gpt2" and tiktoken_installed() else "tokenizers"
        self.backend = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "backend": None}  # each process builds its own

    def start(self) -> None:
        if self.name == "tiktoken":
            self.backend = tiktoken_gpt2()
        else:
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(self.json)
            self.backend.encode_special_tokens = True  # special tokens in the text are text

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.name == "tiktoken":
            return [self.backend.encode_ordinary(text) for text in texts]
        try:
            return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        except Exception as err:  # tokenizers raises a bare Exception for characters outside a char-level vocabulary
            if CHAR_UNKNOWN not in str(err):
                raise
            missing = sorted(set("".join(texts)) - set(self.backend.get_vocab()))
            raise ValueError(f"the text has characters the char-level vocabulary does not have: {''.join(missing)!r}; "
                             f"use --tokenizer char to build the vocabulary from this text.") from None

    def __call__(self, segments: list[tuple[str, bool]]) -> tuple[np.ndarray, int]:
        """(ids of the segments, an <|endoftext|> after each marked one; UTF-8 bytes encoded)."""
        if self.backend is None:
            self.start()
        ids, nbytes = [], 0
        for i in range(0, len(segments), ENCODE_BATCH):
            batch = segments[i : i + ENCODE_BATCH]
            for (text, eot), encoded in zip(batch, self.encode([text for text, _ in batch])):
                ids.extend(encoded)
                if eot and self.eot is not None:
                    ids.append(self.eot)
                nbytes += len(text) if text.isascii() else len(text.encode("utf-8"))
        return np.array(ids, dtype=self.dtype), nbytes


_worker_encoder: Encoder | None = None  # in a worker process


def _start_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    encoder.start()


def _encode_in_worker(segments: list[tuple[str, bool]]) -> tuple[np.ndarray, int]:
    return _worker_encoder(segments)


@contextlib.contextmanager
def one_thread_per_process() -> Iterator[None]:
    """tokenizers' own threads off (it reads TOKENIZERS_PARALLELISM at each call, and in a child at fork):
    num_proc processes use num_proc cores, no more, and a forked worker does not warn about threads."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def worker_pool(num_proc: int, encoder: Encoder):
    """`num_proc` processes, forked where the platform is Linux: a worker starts in milliseconds and shares
    the parent's pages, where spawn and forkserver import torch and transformers again in each
    (BENCHMARKS.md). The workers run only the tokenizer, never torch."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(num_proc, initializer=_start_worker, initargs=(encoder,))


def encode_pieces(work: Iterable[Piece], encoder: Encoder, num_proc: int, in_flight: int) -> Iterator[tuple[str, np.ndarray, int]]:
    """(split, ids, UTF-8 bytes) per piece, in order: here (num_proc 1), or in `num_proc` worker processes
    with at most `in_flight` pieces handed out at once (Pool.imap would read the whole input ahead)."""
    if num_proc == 1:
        with one_thread_per_process():
            for piece in work:
                yield (piece.split, *encoder(piece.segments))
        return
    with one_thread_per_process(), worker_pool(num_proc, encoder) as pool:
        waiting = deque()
        for piece in work:
            waiting.append((piece.split, pool.apply_async(_encode_in_worker, (piece.segments,))))
            if len(waiting) >= in_flight:
                split, result = waiting.popleft()
                yield (split, *result.get())
        while waiting:
            split, result = waiting.popleft()
            yield (split, *result.get())


# ---------------------------------------------------------------------------------------------------
# writing


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
        raise ValueError(f"{what} {value!r}: expected a number with an optional unit, such as 512MB, 1GB, 100M or 4096.")
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
            raise ValueError(f"shard_tokens must be in [1, 2^31) (the header's count is an int32), got {shard_tokens:,}.")
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
        writers = {name: ShardWriter(tmp, name, shard_tokens, dtype) if shard_tokens else BinWriter(tmp / f"{name}.bin")
                   for name in SPLITS}
        try:
            with tqdm(total=src.bytes, desc=f"encoding ({encoder.name}, {num_proc} process{'es' if num_proc > 1 else ''})",
                      unit="B", unit_scale=True, mininterval=1.0) as bar:
                for name, ids, nbytes in encode_pieces(work, encoder, num_proc, in_flight):
                    writers[name].write(ids)
                    tokens, text_bytes = tokens + len(ids), text_bytes + nbytes
                    bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
                    bar.update(nbytes)
        finally:
            counts = {name: writer.close() for name, writer in writers.items()}
        info = {"dtype": dtype.name, "vocab_size": len(tok), "tokenizer": "char" if stoi else str(tokenizer), "source": str(source)}
        if shard_tokens:
            info.update(layout="shards", shard_tokens=shard_tokens)
        if stoi is not None:
            write_meta_pkl(tmp / "meta.pkl", stoi)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    seconds = time.perf_counter() - started
    shards = f", shards of {shard_tokens:,}" if shard_tokens else ""
    log(f"{src.description}: {counts['train']:,} train and {counts['val']:,} val tokens ({dtype.name}{shards}), vocab {len(tok)} "
        f"-> {out_dir} ({text_bytes / 1e6:,.1f} MB in {seconds:.1f} s, {text_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s; "
        f"{num_proc} process{'es' if num_proc > 1 else ''}, {encoder.name})")
    return {**info, **counts}


__all__ = ["TokenData", "open_source", "prepare", "read_shard", "write_shard"]
