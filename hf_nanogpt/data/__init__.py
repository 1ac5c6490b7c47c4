"""Token data for training, at any corpus size: written by `hf-nanogpt prepare`, read by the trainer.

Two layouts:
- nanoGPT's: train.bin and val.bin, the ids back to back, uint16 (uint32 past 65,536 tokens, recorded in
  data_info.json; nanoGPT's own folders have none and are read as uint16), and meta.pkl for char level.
- llm.c's shards, which modded-nanogpt reads too: `*_train_*.bin` and `*_val_*.bin`, each a header of 256
  int32 (magic, version, token count) and then the tokens. Their FineWeb folders are read as they are.
Of conversations, either layout with a loss mask beside each token file (train.mask, shard_train_000000.mask).

    shards.py    llm.c's header and token shards (read_shard, write_shard)
    tokens.py    what the trainer reads: TokenData, nanoGPT's get_batch over either layout
    sources.py   where `prepare` reads documents from, and how they are routed into train and val
    encoding.py  text -> ids in worker processes, cut where the ids stay those of the whole text
    conversations.py  conversations -> ids and a loss mask by the chat template (bad rows counted), in those workers
    writing.py   `prepare` and its writers

    from hf_nanogpt.data import prepare, TokenData
    prepare("input.txt", "data/shakespeare_char", tokenizer="char")       # what nanoGPT's prepare.py scripts do
    data = TokenData("data/shakespeare_char")                               # what train.py reads (either layout)

Importing this package imports none of its modules: the trainer loads tokens.py (and shards.py), never the
encoding machinery.
"""

import importlib

HOMES = {
    "TokenData": "tokens",
    "prepare": "writing",
    "open_source": "sources",
    "read_shard": "shards",
    "write_shard": "shards",
}


def __getattr__(name: str):
    if name in HOMES:
        return getattr(importlib.import_module(f"{__name__}.{HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(HOMES)
