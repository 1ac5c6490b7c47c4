"""What the trainer reads: a prepared data folder in either layout, and nanoGPT's get_batch over it.

- nanoGPT's: train.bin and val.bin, the ids back to back, uint16 (uint32 past 65,536 tokens, recorded in
  data_info.json; nanoGPT's own folders have none and are read as uint16), and meta.pkl for char level.
- llm.c's shards (shards.py): `*_train_*.bin` and `*_val_*.bin`. Their FineWeb folders are read as they are.

A folder of conversations (`prepare` of a messages column, data_info.json's "chat": true) has a loss mask beside
each token file, the same path with the suffix .mask (train.mask, shard_train_000000.mask): raw uint8, one byte per
token, no header, 1 where the token is one the model learns to write (an assistant's reply and its <|im_end|>).
`windows` gives those targets as they are and every other one as -100, the label PyTorch's cross entropy ignores.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..tokenization import char_tokenizer, load_tokenizer, read_meta_pkl
from .shards import read_shard

INFO_FILE = "data_info.json"
SPLITS = ("train", "val")
TOKENIZER_DIR = "tokenizer"  # a saved tokenizer that belongs to the data (prepare --tokenizer bpe:VOCAB writes it)
MASK_SUFFIX = ".mask"
IGNORE_INDEX = -100  # a target no loss is taken on (torch.nn.functional.cross_entropy's ignore_index)


def mask_path(token_file: Path) -> Path:
    """The loss mask of a token file: train.bin -> train.mask, shard_train_000000.bin -> shard_train_000000.mask."""
    return token_file.with_suffix(MASK_SUFFIX)


class TokenData:
    """A prepared data folder in either layout: each split as its token arrays (memory-mapped: one for
    train.bin / val.bin, one a shard), the vocabulary size, and its tokenizer; for conversations (`chat`), each
    array's loss mask (`masks`, memory-mapped too).

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
            self.files = {name: [path] for name, path in bins.items()}
            self.shards = {name: [np.memmap(path, dtype=self.dtype, mode="r")] for name, path in bins.items()}
        elif all(shard_files.values()):
            self.layout = "shards"
            self.files = shard_files
            self.shards = {name: [read_shard(path) for path in files] for name, files in shard_files.items()}
            dtypes = {ids.dtype for parts in self.shards.values() for ids in parts}
            if len(dtypes) > 1:
                raise ValueError(
                    f"{self.dir}: shards of different token types ({sorted(d.name for d in dtypes)}); one folder "
                    f"holds one tokenizer's ids."
                )
            self.dtype = dtypes.pop()
        else:
            missing = [path.name for path in bins.values() if not path.is_file()]
            raise FileNotFoundError(
                f"{self.dir}: missing {missing}, and no token shards (*_train_*.bin and *_val_*.bin) either. Prepare "
                f"the data first: `hf-nanogpt prepare INPUT {self.dir} --tokenizer char|gpt2` "
                f"(or nanoGPT's prepare.py, "
                f"or llm.c's dev/data/fineweb.py)."
            )
        files = [path for paths in self.files.values() for path in paths]
        self.chat = bool(info.get("chat")) or any(mask_path(path).is_file() for path in files)
        self.masks = None  # each split's loss masks, one per token array, for conversations
        if self.chat:
            self.masks = {
                name: [self.read_mask(path, ids) for path, ids in zip(self.files[name], self.shards[name])]
                for name in SPLITS
            }

    def read_mask(self, token_file: Path, ids: np.ndarray) -> np.ndarray:
        """The loss mask beside a token file, memory-mapped, once it has one byte per token."""
        path = mask_path(token_file)
        redo = f"Prepare the conversations again: `hf-nanogpt prepare CONVERSATIONS {self.dir} --tokenizer MODEL`."
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing. {self.dir} holds conversations (data_info.json's \"chat\" or another .mask file), "
                f"so each token file has its loss mask beside it, and {token_file.name} has none. {redo}"
            )
        size = path.stat().st_size
        if size != len(ids):
            how = "short" if size < len(ids) else "long"
            raise ValueError(
                f"{path}: {size:,} bytes, but {token_file.name} holds {len(ids):,} tokens: a mask has one byte per "
                f"token; this one is {how}. {redo}"
            )
        if size == 0:
            return np.zeros(0, np.uint8)  # np.memmap cannot map nothing
        return np.memmap(path, dtype=np.uint8, mode="r")

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """Each split's ids as one array: train.bin / val.bin as mapped; shards joined in memory (small data,
        tests)."""
        return {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in self.shards.items()}

    def tokenizer(self):
        """meta.pkl -> char level; a tokenizer/ folder (a BPE trained on this data); data_info.json's tokenizer;
        else GPT-2 BPE, as nanoGPT and llm.c assume."""
        if self.meta is not None:
            return char_tokenizer(self.meta["stoi"])
        if (self.dir / TOKENIZER_DIR).is_dir():
            return load_tokenizer(self.dir / TOKENIZER_DIR)
        return load_tokenizer(self.tokenizer_spec or "gpt2")

    def window_counts(self, split: str, block_size: int) -> np.ndarray:
        """How many windows of block_size + 1 ids start in each of the split's arrays."""
        return np.array([max(len(ids) - block_size, 0) for ids in self.shards[split]], dtype=np.int64)

    def check_block_size(self, block_size: int) -> None:
        """Each split holds a window: an array of at least block_size + 1 ids (x and y, one apart)."""
        for name, parts in self.shards.items():
            longest = max(len(ids) for ids in parts)
            if longest < block_size + 1:
                where = (
                    self.dir / f"{name}.bin" if self.layout == "nanogpt" else f"{self.dir}: the longest {name} shard"
                )
                raise ValueError(f"{where} holds {longest} tokens: too few for block_size {block_size}.")

    def locate(self, split: str, starts: torch.Tensor, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Window starts (token offsets, for one array; numbers over all the split's window starts, for shards)
        as (the array each falls in, the offset in it)."""
        counts = self.window_counts(split, block_size)
        ends = np.cumsum(counts)
        starts = starts.numpy()
        which = (
            np.searchsorted(ends, starts, side="right") if len(counts) > 1 else np.zeros(len(starts), dtype=np.int64)
        )
        return which, starts - (ends - counts)[which]

    def windows(self, split: str, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch for given window starts (`locate`): x = ids[i : i+T], y = ids[i+1 : i+1+T]; with
        masks, y is -100 wherever its token's mask is 0."""
        which, offsets = self.locate(split, starts, block_size)
        # one gather per array: rows of block_size + 1 ids, then x and y as the two overlapping views
        rows = np.empty((len(which), block_size + 1), dtype=np.int64)
        taught = self.target_masks(split, which, offsets, block_size)  # y's mask
        for i in np.unique(which):
            chosen = which == i
            rows[chosen] = self.shards[split][i][offsets[chosen, None] + np.arange(block_size + 1)]
        x, y = rows[:, :-1].copy(), rows[:, 1:].copy()
        if taught is not None:
            y[taught == 0] = IGNORE_INDEX
        return torch.from_numpy(x), torch.from_numpy(y)

    def target_masks(self, split: str, which: np.ndarray, offsets: np.ndarray, block_size: int) -> np.ndarray | None:
        """The masks of located windows' targets (len, block_size): mask[i+1 : i+1+T]; None without masks."""
        if not self.masks:
            return None
        taught = np.empty((len(which), block_size), dtype=np.uint8)
        for i in np.unique(which):
            chosen = which == i
            taught[chosen] = self.masks[split][i][offsets[chosen, None] + np.arange(1, block_size + 1)]
        return taught

    def counted_targets(self, split: str, starts: torch.Tensor, block_size: int) -> int:
        """How many of these windows' targets a loss counts: every one, or for conversations those of mask 1
        (the targets `windows` does not give as -100); reads the masks only, not the ids."""
        taught = self.target_masks(split, *self.locate(split, starts, block_size), block_size)
        return len(starts) * block_size if taught is None else int(np.count_nonzero(taught))

    def random_starts(self, split: str, block_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` window starts drawn uniformly over all of the split's windows."""
        return torch.randint(int(self.window_counts(split, block_size).sum()), (count,), generator=generator)

    def random_batch(
        self, split: str, block_size: int, batch_size: int, generator: torch.Generator, world: int = 1, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch: random windows from `generator`, drawn for all `world` processes at once
        (so every process advances the generator alike), then process `rank`'s share of `batch_size`."""
        starts = self.random_starts(split, block_size, batch_size * world, generator)
        return self.windows(split, starts[rank * batch_size : (rank + 1) * batch_size], block_size)


__all__ = ["IGNORE_INDEX", "INFO_FILE", "MASK_SUFFIX", "SPLITS", "TOKENIZER_DIR", "TokenData", "mask_path"]
