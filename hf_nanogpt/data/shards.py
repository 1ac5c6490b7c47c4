"""llm.c's binary header, and the token shards that use it (dev/data/data_common.py).

Every llm.c binary file starts with a header of 256 int32: a magic number that names the kind of file, a
version, the kind's own fields, then zeros. It is read and written here only: for the token shards below
and for the model files of conversion/llmc.py.

A token shard is the header (magic, version, token count) and then the tokens (SHARD_FORMATS); llm.c's
FineWeb folders and modded-nanogpt read the same files.
"""

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# magic number -> what the file is (llm.c's train_gpt2.py, test_gpt2.c, tokenizer and data scripts)
LLMC_MAGICS = {
    20240326: "an llm.c model file such as gpt2_124M.bin or model_00005000.bin",
    20240327: "an llm.c state file (state_*.bin: optimizer state, or a test_gpt2 debug state)",
    20240328: "an llm.c tokenizer file (gpt2_tokenizer.bin)",
    20240520: "an llm.c token shard, uint16 tokens: GPT-2's vocabulary",
    20240801: "an llm.c token shard, uint32 tokens: Llama 3's vocabulary",
}

# the token shards' magic -> (version, token dtype): GPT-2's vocabulary in uint16, Llama 3's in uint32
SHARD_FORMATS = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}
SHARD_PREFIX = "shard"  # our shards: shard_train_000000.bin, ... (llm.c's are fineweb_train_000001.bin, ...)


# ---------------------------------------------------------------------------------------------------
# the header


def header_bytes(*fields: int) -> bytes:
    """An llm.c header: `fields` (magic, version, the kind's fields), then zeros up to 256 int32."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[: len(fields)] = fields
    return header.tobytes()


def read_header(
    path: Path, magics: Iterable[int], kind: str, redo: str, error: type[Exception] = ValueError
) -> tuple[list[int], int]:
    """(the header's 256 ints, the file's size in bytes), once the file holds a header whose magic number
    is one of `magics`; else `error` naming the file, what it is and, in `redo`, how to write it again."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise error(
            f"{path}: {size} bytes, shorter than the {HEADER_BYTES:,}-byte header of {kind}: truncated? {redo}"
        )
    ints = np.fromfile(path, dtype="<i4", count=HEADER_INTS).tolist()
    if ints[0] not in magics:
        expected = " or ".join(f"{m} ({LLMC_MAGICS[m]})" for m in magics)
        raise error(
            f"{path}: magic number {ints[0]}, expected {expected}: this is {LLMC_MAGICS.get(ints[0], f'not {kind}')}."
        )
    return ints, size


def check_size(
    path: Path, size: int, expected: int, says: str, contents: str, redo: str, error: type[Exception] = ValueError
) -> None:
    """The file's size is the one its header gives (`says`: what the header says, in words)."""
    if size != expected:
        how = "truncated" if size < expected else f"{size - expected:,} bytes longer than its {contents}"
        raise error(
            f"{path}: {size:,} bytes, but its header says {says} ({expected:,} bytes with the header): {how}. {redo}"
        )


# ---------------------------------------------------------------------------------------------------
# token shards


def shard_header(count: int, dtype: np.dtype) -> bytes:
    """The 1,024-byte header of a shard holding `count` tokens of `dtype`."""
    magic = next(m for m, (_, d) in SHARD_FORMATS.items() if d == dtype)
    return header_bytes(magic, SHARD_FORMATS[magic][0], count)


def write_shard(path: str | os.PathLike, ids, dtype=np.uint16) -> None:
    """One shard file: the header, then `ids` as uint16 (GPT-2's format) or uint32 (Llama 3's)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    ids = np.asarray(ids, dtype=dtype)
    with open(path, "wb") as f:
        f.write(shard_header(len(ids), dtype))
        ids.tofile(f)


def read_shard(path: Path) -> np.ndarray:
    """A shard's tokens, memory-mapped, once its header (magic, version, count) agrees with the file's size."""
    redo = "Write it again (`hf-nanogpt prepare ... --shard_tokens N`, or llm.c's dev/data/fineweb.py)."
    (magic, version, count, *_), size = read_header(path, SHARD_FORMATS, "a token shard", redo)
    expected_version, dtype = SHARD_FORMATS[magic]
    if version != expected_version:
        raise ValueError(f"{path}: version {version}, expected {expected_version} with magic {magic}. {redo}")
    if count < 0:
        raise ValueError(f"{path}: its header says {count:,} tokens. {redo}")
    check_size(path, size, HEADER_BYTES + count * dtype.itemsize, f"{count:,} tokens", "tokens", redo)
    if count == 0:
        return np.zeros(0, dtype)  # np.memmap cannot map nothing
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
