"""nanoGPT's data/openwebtext/prepare.py approach on a local JSON-lines corpus: what B5 (benchmarks/prepare.py)
compares `hf-nanogpt prepare` with.

    python -m benchmarks.nanogpt_prepare CORPUS.jsonl OUT_DIR [--num-proc N]

The steps of that script, written here from its description: `datasets.load_dataset` (here "json" on the
file, there "openwebtext"), `train_test_split(test_size=0.0005, seed=2357, shuffle=True)`, `map` with
tiktoken's GPT-2 `encode_ordinary` and <|endoftext|> appended to each document (num_proc processes), then
each split written into an np.memmap of the summed lengths, in 1024 contiguous batches. Needs tiktoken;
`tiktoken.get_encoding("gpt2")` would download GPT-2's two files, so the encoding is built by tiktoken from
hf_nanogpt's bundled copy of them. Like nanoGPT's script, this imports neither torch nor hf_nanogpt.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

GPT2_FILES = Path(__file__).resolve().parent.parent / "hf_nanogpt" / "assets" / "gpt2_bpe"
os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files where they are, without copying them to a cache
ranks = data_gym_to_mergeable_bpe_ranks(str(GPT2_FILES / "vocab.bpe"), str(GPT2_FILES / "encoder.json"))
enc = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def encode(row: dict) -> dict:
    ids = enc.encode_ordinary(row["text"]) + [enc.eot_token]
    return {"ids": ids, "len": len(ids)}


def main(argv=None) -> None:
    import datasets

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-proc", type=int, default=8)
    args = p.parse_args(argv)
    dataset = datasets.load_dataset("json", data_files=str(args.corpus), num_proc=args.num_proc)
    splits = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    splits["val"] = splits.pop("test")
    tokenized = splits.map(encode, remove_columns=["text"], desc="tokenizing the splits", num_proc=args.num_proc)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in tokenized.items():
        out = np.memmap(
            args.out_dir / f"{split}.bin",
            dtype=np.uint16,
            mode="w+",
            shape=(int(np.sum(rows["len"], dtype=np.uint64)),),
        )
        start, parts = 0, min(1024, len(rows))  # 1024 writes there; fewer for a split of fewer documents
        for i in range(parts):
            ids = np.concatenate(rows.shard(num_shards=parts, index=i, contiguous=True).with_format("numpy")["ids"])
            out[start : start + len(ids)] = ids
            start += len(ids)
        out.flush()


if __name__ == "__main__":
    main()
