"""What the trainer reads: a prepared data folder in either layout, and nanoGPT's get_batch over it.

- nanoGPT's: train.bin and val.bin, the ids back to back, uint16 (uint32 past 65,536 tokens, recorded in
  data_info.json; nanoGPT's own folders have none and are read as uint16), and meta.pkl for char level.
- llm.c's shards (shards.py): `*_train_*.bin` and `*_val_*.bin`. Their FineWeb folders are read as they are.
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
IGNORE_INDEX = -100  # a target not learned (transformers' loss ignores it): chat data's tokens outside the assistant's
MASK_SUFFIX = ".mask"  # beside each token file of chat data: one uint8 a token, 1 where the model learns to write it


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
        self.chat = bool(info.get("chat"))  # conversations: y is IGNORE_INDEX where the target's mask is 0
        bins = {name: self.dir / f"{name}.bin" for name in SPLITS}
        shard_files = {name: sorted(self.dir.glob(f"*_{name}_*.bin")) for name in SPLITS}
        if all(path.is_file() for path in bins.values()):
            self.layout = "nanogpt"
            self.dtype = np.dtype(info.get("dtype", "uint16"))
            self.shards = {name: [np.memmap(path, dtype=self.dtype, mode="r")] for name, path in bins.items()}
            files = {name: [path] for name, path in bins.items()}
        elif all(shard_files.values()):
            self.layout = "shards"
            self.shards = {name: [read_shard(path) for path in files] for name, files in shard_files.items()}
            files = shard_files
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
        self.masks = (
            {
                name: [np.memmap(path.with_suffix(MASK_SUFFIX), dtype=np.uint8, mode="r") for path in paths]
                for name, paths in files.items()
            }
            if self.chat
            else None
        )

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

    def windows(self, split: str, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch for given window starts (token offsets, for one array; numbers over all the
        split's window starts, for shards): x = ids[i : i+T], y = ids[i+1 : i+1+T], and for chat data y is
        IGNORE_INDEX where the target's mask is 0."""
        counts = self.window_counts(split, block_size)
        ends = np.cumsum(counts)
        starts = starts.numpy()
        which = (
            np.searchsorted(ends, starts, side="right") if len(counts) > 1 else np.zeros(len(starts), dtype=np.int64)
        )
        offsets = starts - (ends - counts)[which]
        # one gather per array: rows of block_size + 1 ids, then x and y as the two overlapping views
        rows = np.empty((len(starts), block_size + 1), dtype=np.int64)
        for i in np.unique(which):
            chosen = which == i
            rows[chosen] = self.shards[split][i][offsets[chosen, None] + np.arange(block_size + 1)]
        x, y = rows[:, :-1].copy(), rows[:, 1:].copy()
        if self.masks is not None:
            for i in np.unique(which):
                chosen = which == i
                taught = self.masks[split][i][offsets[chosen, None] + 1 + np.arange(block_size)]
                y[chosen] = np.where(taught == 0, IGNORE_INDEX, y[chosen])
        return torch.from_numpy(x), torch.from_numpy(y)

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


__all__ = ["IGNORE_INDEX", "INFO_FILE", "MASK_SUFFIX", "SPLITS", "TOKENIZER_DIR", "TokenData"]
