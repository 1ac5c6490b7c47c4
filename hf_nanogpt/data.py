"""nanoGPT's data layout: a folder with train.bin and val.bin (token ids, back to back) and, for
character-level data, meta.pkl.

    prepare("input.txt", "data/shakespeare_char", tokenizer="char")   # what nanoGPT's prepare.py scripts do
    data = TokenData("data/shakespeare_char")                         # what train.py reads

Ids are uint16, as nanoGPT writes them; a vocabulary over 65,536 tokens gets uint32, recorded in
data_info.json (nanoGPT's own folders have none and are read as uint16).
"""

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .saving import atomic_output_dir, check_apart
from .tokenization import GPT2_EOS, char_tokenizer, char_vocab, load_tokenizer, read_meta_pkl, write_meta_pkl

INFO_FILE = "data_info.json"
TEXT_SUFFIXES = (".txt", ".md", ".py", ".text", ".rst")


# ---------------------------------------------------------------------------------------------------
# reading (the trainer)


class TokenData:
    """A prepared data folder: memory-mapped train/val ids, vocabulary size, and its tokenizer."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir)
        missing = [name for name in ("train.bin", "val.bin") if not (self.dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.dir}: missing {missing}. Prepare the data first: "
                f"`hf-nanogpt prepare INPUT {self.dir} --tokenizer char|gpt2` (or nanoGPT's prepare.py)."
            )
        info = json.loads((self.dir / INFO_FILE).read_text()) if (self.dir / INFO_FILE).is_file() else {}
        self.dtype = np.dtype(info.get("dtype", "uint16"))
        self.meta = read_meta_pkl(self.dir / "meta.pkl") if (self.dir / "meta.pkl").is_file() else None
        self.vocab_size = self.meta["vocab_size"] if self.meta else info.get("vocab_size")
        self.tokenizer_spec = info.get("tokenizer")
        self.splits = {name: np.memmap(self.dir / f"{name}.bin", dtype=self.dtype, mode="r") for name in ("train", "val")}

    def tokenizer(self):
        """meta.pkl -> char level; data_info.json's tokenizer; else GPT-2 BPE, as nanoGPT assumes."""
        if self.meta is not None:
            return char_tokenizer(self.meta["stoi"])
        return load_tokenizer(self.tokenizer_spec or "gpt2")

    def check_block_size(self, block_size: int) -> None:
        for name, ids in self.splits.items():
            if len(ids) <= block_size + 1:
                raise ValueError(f"{self.dir / (name + '.bin')} holds {len(ids)} tokens: too few for block_size {block_size}.")

    def windows(self, split: str, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch for given window starts: x = ids[i : i+T], y = ids[i+1 : i+1+T]."""
        # one gather for the whole batch: rows of block_size + 1 ids, then x and y as the two overlapping views
        rows = self.splits[split][starts.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64)
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def random_batch(self, split: str, block_size: int, batch_size: int, generator: torch.Generator,
                     world: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch: random windows from `generator`, drawn for all `world` processes at once
        (so every process advances the generator alike), then process `rank`'s share of `batch_size`."""
        n = len(self.splits[split]) - block_size
        starts = torch.randint(n, (batch_size * world,), generator=generator)[rank * batch_size : (rank + 1) * batch_size]
        return self.windows(split, starts, block_size)


# ---------------------------------------------------------------------------------------------------
# writing (`hf-nanogpt prepare`)


def read_documents(source: str | os.PathLike, text_column: str = "text", split: str = "train") -> tuple[list[str], str]:
    """A text file -> one document; a folder -> its text files, sorted; else a `datasets` data set
    (a name or a saved folder) -> its text column."""
    path = Path(source)
    if path.is_file():
        return [path.read_text(encoding="utf-8")], f"{path}"
    if path.is_dir() and not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no text files ({', '.join(TEXT_SUFFIXES)}) found.")
        return [p.read_text(encoding="utf-8") for p in files], f"{len(files)} files under {path}"
    try:
        import datasets
    except ImportError as err:
        raise FileNotFoundError(f"{source}: not a file or folder; to read a `datasets` data set, pip install datasets.") from err
    try:
        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(str(source), split=split)
    except Exception as err:
        raise FileNotFoundError(f"{source}: not a text file, a folder of text files, or a loadable data set ({err}).") from err
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split]
    if text_column not in ds.column_names:
        raise ValueError(f"{source}: no column {text_column!r} (columns: {ds.column_names}); pass --text_column.")
    return list(ds[text_column]), f"data set {source} ({len(ds)} rows)"


def text_chunks(text: str, size: int | None) -> Iterator[str]:
    """`text` in pieces of `size` characters (all of it when size is None)."""
    step = size or max(len(text), 1)
    for start in range(0, len(text), step):
        yield text[start : start + step]


def encode_documents(documents: list[str], tokenizer, desc: str) -> Iterator[list[int]]:
    """Token ids per piece of text, with a progress bar in characters; GPT-2 style data gets
    <|endoftext|> after each document when there are several (as nanoGPT's openwebtext/prepare.py).
    Char-level text is encoded in 1M-character pieces (cutting anywhere is exact there); a BPE document is
    encoded whole, since a cut could fall inside what BPE merges."""
    eot = tokenizer.convert_tokens_to_ids(GPT2_EOS) if GPT2_EOS in tokenizer.get_vocab() else None
    backend = tokenizer.backend_tokenizer
    piece = 1 << 20 if char_vocab(tokenizer) is not None else None
    with tqdm(total=sum(map(len, documents)), desc=desc, unit="char", unit_scale=True) as bar:
        for doc in documents:
            for chunk in text_chunks(doc, piece):
                yield backend.encode(chunk, add_special_tokens=False).ids
                bar.update(len(chunk))
            if eot is not None and len(documents) > 1:
                yield [eot]


def write_ids(path: Path, chunks: Iterable[list[int]], dtype: np.dtype) -> int:
    n = 0
    with open(path, "wb") as f:
        for ids in chunks:
            np.asarray(ids, dtype=dtype).tofile(f)
            n += len(ids)
    return n


def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    text_column: str = "text",
    overwrite: bool = False,
    log=print,
) -> dict:
    """Write nanoGPT's data layout: the first (1 - val_fraction) of the text is train, the rest val, as
    nanoGPT's shakespeare prepare.py scripts split it. `tokenizer`: "char" (vocabulary from the text,
    meta.pkl written), "gpt2", or a tokenizer folder / meta.pkl."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    check_apart(out_dir, source, "OUT_DIR", "INPUT")
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: pass --overwrite to replace it.")
    documents, what = read_documents(source, text_column)
    if tokenizer == "char":
        tok = char_tokenizer("".join(documents))
    else:
        tok = load_tokenizer(tokenizer)
    stoi = char_vocab(tok)
    dtype = np.dtype(np.uint16 if len(tok) <= 2**16 else np.uint32)
    # split by characters of one text (single document) or by documents (several), then encode each side
    if len(documents) == 1:
        n = int(len(documents[0]) * (1 - val_fraction))
        parts = {"train": [documents[0][:n]], "val": [documents[0][n:]]}
    else:
        n = max(1, min(len(documents) - 1, int(len(documents) * (1 - val_fraction))))
        parts = {"train": documents[:n], "val": documents[n:]}
    counts = {}
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        for split, docs in parts.items():
            counts[split] = write_ids(tmp / f"{split}.bin", encode_documents(docs, tok, f"encoding {split}"), dtype)
        info = {"dtype": dtype.name, "vocab_size": len(tok), "tokenizer": "char" if stoi else str(tokenizer), "source": str(source)}
        if stoi is not None:
            write_meta_pkl(tmp / "meta.pkl", stoi)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"{what}: {counts['train']:,} train and {counts['val']:,} val tokens ({dtype.name}), vocab {len(tok)} -> {out_dir}")
    return {**info, **counts}


__all__ = ["TokenData", "prepare", "read_documents"]
