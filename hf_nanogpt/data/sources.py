"""Where `prepare` reads documents from, each a block at a time: a text file, a folder of text files, or a
`datasets` data set (saved, local data files or the Hub, streamed), of texts or of conversations (a messages
column); and the rules that route them into the train and val splits (`route`).
"""

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".py", ".text", ".rst")
DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}  # datasets' loaders
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # datasets reads these compressed data files as they are

READ_CHARS = 1 << 20  # characters per read from a text file


@dataclass
class Source:
    """Where documents come from. `documents()` yields each document as an iterable of text blocks, or for
    conversations (`chat`) each row's messages as they are read, unchecked (a new pass each call); `count` is
    their number where it is known before reading them (None: a stream)."""

    documents: Callable[[], Iterator[Iterable[str]]] | Callable[[], Iterator[object]]
    count: int | None
    description: str
    bytes: int | None = None  # the text's size, for the progress bar, where known
    chat: bool = False


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


def open_source(
    source: str | os.PathLike,
    text_column: str = "text",
    split: str = "train",
    dataset_config: str | None = None,
    messages_column: str = "messages",
) -> Source:
    """A text file (one document); a folder of text files (one document each, sorted by path); else a
    `datasets` data set (`dataset_source`), of conversations where it has `messages_column` and no `text_column`."""
    path = Path(source)
    if dataset_config is not None and path.exists():
        raise ValueError(
            f"--dataset_config {dataset_config!r} names a configuration of a Hub data set; {source} is a local path."
        )
    if path.is_file() and data_file_builder(path) is None:
        return Source(lambda: iter([read_blocks(path)]), 1, str(path), path.stat().st_size)
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if files:
            return Source(
                lambda: (read_blocks(p) for p in files),
                len(files),
                f"{len(files)} files under {path}",
                sum(p.stat().st_size for p in files),
            )
    return dataset_source(source, text_column, split, dataset_config, messages_column)


def dataset_source(
    source: str | os.PathLike,
    text_column: str,
    split: str,
    dataset_config: str | None,
    messages_column: str = "messages",
) -> Source:
    """A saved data set folder (load_from_disk: its length is known), local data files (a file or a folder
    of .json/.jsonl/.parquet/.csv/.arrow files) or a Hub name (`dataset_config`: its configuration, such as
    FineWeb's sample-10BT); the last two are streamed (streaming=True), nothing is downloaded or converted
    first. Rows are read in batches of the text column only; or, where the data set has `messages_column` and
    no `text_column`, of the messages column: a conversation set (`chat`)."""
    try:
        import datasets
    except ImportError as err:
        raise FileNotFoundError(
            f"{source}: not a text file or folder; to read a `datasets` data set, pip install datasets."
        ) from err
    path = Path(source)
    files = [path] if path.is_file() else []
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_file_builder(p))
        if not files:
            raise FileNotFoundError(
                f"{path}: no text files ({', '.join(TEXT_SUFFIXES)}), data files "
                f"({', '.join(DATA_FILE_BUILDERS)}) or saved data set found."
            )
    builders = {data_file_builder(p) for p in files}
    if len(builders) > 1:
        raise ValueError(f"{path}: data files of several kinds ({sorted(builders)}); keep one kind in the folder.")
    try:
        if files:
            ds = datasets.load_dataset(
                builders.pop(), data_files=[str(p) for p in files], split="train", streaming=True
            )
        elif path.is_dir():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(str(source), name=dataset_config, split=split, streaming=True)
    except Exception as err:
        raise FileNotFoundError(
            f"{source}: not a text file, a folder of text files, or a loadable data set ({err})."
        ) from err
    columns = ds.column_names
    if columns is None:  # a stream may know its columns only once read: its first row's
        columns = list(next(iter(ds), {}))
    count = len(ds) if isinstance(ds, datasets.Dataset) else None
    if text_column not in columns and messages_column in columns:
        ds = ds.select_columns([messages_column])

        def conversations() -> Iterator[object]:
            for batch in ds.iter(batch_size=256):
                yield from batch[messages_column]

        rows = f"{count:,} rows" if count is not None else "streamed"
        return Source(conversations, count, f"conversations {source} ({rows})", chat=True)
    if columns and text_column not in columns:
        raise ValueError(
            f"{source}: no column {text_column!r} (text) or {messages_column!r} (conversations) (columns: "
            f"{columns}); pass --text_column or --messages_column."
        )
    ds = ds.select_columns([text_column])

    def documents() -> Iterator[tuple[str]]:
        for batch in ds.iter(batch_size=256):
            if text_column not in batch:
                raise ValueError(
                    f"{source}: no column {text_column!r} (columns: {sorted(batch)}); pass --text_column."
                )
            for text in batch[text_column]:
                if not isinstance(text, str):
                    raise ValueError(f"{source}: a row's {text_column!r} is {type(text).__name__}, not text.")
                yield (text,)

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
    """(split, a document, one of several documents?) in reading order, by the rules `prepare` states. A
    conversation is never cut: a set of one trains on it."""
    if src.count == 1 and not src.chat:  # one text: by characters (a first pass counts them)
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
            yield (
                ("val" if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction) else "train"),
                document,
                True,
            )


__all__ = ["Source", "characters", "open_source", "route"]
