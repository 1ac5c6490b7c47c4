"""`hf-nanogpt prepare` at scale (issue 15): streamed and cut text gives the ids of the text encoded whole,
in memory; llm.c's shards written, read and trained on; resume on shards bit-exact; a corpus larger than
--max_memory."""

import functools
import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import FIXTURES, step_losses, tiny, val_losses
from hf_nanogpt import cli
from hf_nanogpt.data.encoding import cut_rule, newline_cut
from hf_nanogpt.data.shards import read_shard, write_shard
from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.tokenization import GPT2_EOS, char_tokenizer, gpt2_tokenizer
from hf_nanogpt.train import train
from hf_nanogpt.training.evaluation import evaluation_windows

pytestmark = pytest.mark.slow

# what makes GPT-2's pre-tokenizer hard to cut: blank lines, runs of spaces and tabs, white space of every kind
# (\r, \x85, no-break and ideographic spaces, \x1c which str.isspace calls space and the regex does not),
# contractions, digits, punctuation, letters and emoji outside ASCII, and a literal <|endoftext|>
PIECES = [
    "word",
    "Zebra",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    " \n",
    "\n ",
    "'s",
    "'ll",
    "42",
    "7",
    ".",
    "!?",
    ",",
    "é",
    "日本語",
    "😀",
    "\r",
    "\x85",
    "\xa0",
    "\u3000",
    "\u2028",
    "\x1c",
    GPT2_EOS,
]


def tricky_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) for _ in range(n))


@functools.cache
def gpt2_backend():
    backend = gpt2_tokenizer().backend_tokenizer
    backend.encode_special_tokens = True  # special tokens in the text are text, as tiktoken's encode_ordinary
    return backend


def ordinary(text: str) -> list[int]:
    """GPT-2 ids of `text` encoded whole, in memory."""
    return gpt2_backend().encode(text, add_special_tokens=False).ids


def split_bytes(folder) -> dict[str, bytes]:
    """Each split's ids as bytes: train.bin / val.bin, or the shards' tokens joined."""
    return {name: np.asarray(ids).tobytes() for name, ids in TokenData(folder).splits.items()}


def as_bytes(ids: list[int], dtype=np.uint16) -> bytes:
    return np.asarray(ids, dtype=dtype).tobytes()


# -- cutting text ---------------------------------------------------------------------------------------


def test_a_gpt2_text_cut_before_a_newline_after_a_non_space_encodes_as_the_whole():
    tokenizer = gpt2_tokenizer()
    assert cut_rule(tokenizer) == "newline" and cut_rule(char_tokenizer("ab")) == "anywhere"
    checked = 0
    for seed in range(60):
        text = tricky_text(120, seed)
        whole = ordinary(text)
        for i in range(1, len(text)):
            if text[i] == "\n" and not text[i - 1].isspace():
                assert ordinary(text[:i]) + ordinary(text[i:]) == whole, (seed, i)
                checked += 1
    assert checked > 300
    # where the rule does not cut, a cut would not be exact: inside or at the end of a run of white space
    assert ordinary("a\n") + ordinary("\n b") != ordinary("a\n\n b")
    assert ordinary("\n\n") + ordinary("a") != ordinary("\n\na") and ordinary(" ") + ordinary("a") != ordinary(" a")
    # newline_cut takes the last allowed cut at or before the target, else the first after it
    text = "one\n\ntwo  \n\nthree\n"
    assert newline_cut(text, 0, 10, 0) == 3  # 4 ("\n" after "\n") and 10 ("\n" after a space) are not allowed
    assert newline_cut(text, 3, 5, 0) == 17 and newline_cut("a \n \n", 0, 1, 0) is None


# -- streaming equals the whole text encoded in memory --------------------------------------------------


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_text_file_streamed_in_pieces_equals_its_halves_encoded_whole(tmp_path, num_proc):
    (tmp_path / "input.txt").write_text(
        "".join(tricky_text(3_000, seed) + "\n" for seed in range(20)), encoding="utf-8"
    )
    text = (tmp_path / "input.txt").read_text(encoding="utf-8")  # 120k characters, 280 kB (\r read as \n)
    n = int(len(text) * 0.9)
    # 16KB of --max_memory: pieces of 4k characters, a hundred of them
    info = prepare(tmp_path / "input.txt", tmp_path / "bpe", tokenizer="gpt2", num_proc=num_proc, max_memory="16KB")
    assert split_bytes(tmp_path / "bpe") == {
        "train": as_bytes(ordinary(text[:n])),
        "val": as_bytes(ordinary(text[n:])),
    }
    assert info["train"] == len(ordinary(text[:n]))
    prepare(tmp_path / "input.txt", tmp_path / "char", tokenizer="char", num_proc=num_proc, max_memory="16KB")
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    assert split_bytes(tmp_path / "char") == {
        "train": as_bytes([stoi[c] for c in text[:n]]),
        "val": as_bytes([stoi[c] for c in text[n:]]),
    }


def test_a_folder_and_data_sets_streamed_equal_their_documents_encoded_whole(tmp_path):
    datasets = pytest.importorskip("datasets")
    documents = [tricky_text(random.Random(i).randint(0, 4_000), seed=i) for i in range(40)]
    eot = gpt2_tokenizer().convert_tokens_to_ids(GPT2_EOS)

    def expected(documents: list[str], val: list[bool]) -> dict[str, bytes]:
        ids = {"train": [], "val": []}
        for doc, is_val in zip(documents, val):
            ids["val" if is_val else "train"] += ordinary(doc) + [eot]
        return {name: as_bytes(v) for name, v in ids.items()}

    first_36 = [i >= 36 for i in range(40)]  # 40 documents known before reading: the first 90% train
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(documents):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    files = [(tmp_path / "docs" / f"{i:02d}.txt").read_text(encoding="utf-8") for i in range(40)]  # \r read as \n
    prepare(tmp_path / "docs", tmp_path / "from_folder", tokenizer="gpt2", max_memory="16KB")
    assert split_bytes(tmp_path / "from_folder") == expected(files, first_36)
    datasets.Dataset.from_dict({"text": documents, "n": list(range(40))}).save_to_disk(str(tmp_path / "saved"))
    prepare(tmp_path / "saved", tmp_path / "from_saved", tokenizer="gpt2", max_memory="16KB")
    assert split_bytes(tmp_path / "from_saved") == expected(documents, first_36)
    # a stream (local data files are streamed) has no length up front: every (1/f)-th document validates
    with open(tmp_path / "rows.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc, "n": i}) + "\n" for i, doc in enumerate(documents))
    datasets.Dataset.from_dict({"text": documents}).to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("rows.jsonl", "rows.parquet"):
        prepare(
            tmp_path / name,
            tmp_path / f"from_{name}",
            tokenizer="gpt2",
            val_fraction=0.25,
            num_proc=2,
            max_memory="16KB",
        )
        assert split_bytes(tmp_path / f"from_{name}") == expected(documents, [i % 4 == 3 for i in range(40)]), name


def test_tiktoken_and_tokenizers_give_the_same_ids(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    import hf_nanogpt.data.encoding

    text = "".join(tricky_text(2_000, seed) + "\n\n" for seed in range(10))
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    prepare(tmp_path / "input.txt", tmp_path / "tiktoken", tokenizer="gpt2", max_memory="16KB")
    monkeypatch.setattr(hf_nanogpt.data.encoding, "tiktoken_installed", lambda: False)
    prepare(tmp_path / "input.txt", tmp_path / "tokenizers", tokenizer="gpt2", max_memory="16KB")
    assert split_bytes(tmp_path / "tiktoken") == split_bytes(tmp_path / "tokenizers")


def test_a_corpus_larger_than_max_memory_prepares_the_same(tmp_path, capsys):
    text = (FIXTURES / "shakespeare_char" / "input_head.txt").read_text(encoding="utf-8") * 3  # 300 kB
    (tmp_path / "input.txt").write_text(text)
    base = ["prepare", str(tmp_path / "input.txt"), "--tokenizer", "gpt2", "--num_proc", "2"]
    assert cli.main([*base[:2], str(tmp_path / "default"), *base[2:]]) == 0
    assert cli.main([*base[:2], str(tmp_path / "small"), *base[2:], "--max_memory", "32KB"]) == 0  # 1/10 of the text
    assert split_bytes(tmp_path / "small") == split_bytes(tmp_path / "default")
    for bad, message in (
        (["--max_memory", "lots"], "max_memory 'lots': expected a number"),
        (["--shard_tokens", "0"], "shard_tokens must be in [1, 2^31)"),
        (["--num_proc", "0"], "num_proc must be at least 1"),
        (["--dataset_config", "sample-10BT"], "names a configuration of a Hub data set"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*base[:2], str(tmp_path / "bad"), *base[2:], *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# -- shards ---------------------------------------------------------------------------------------------


def test_shards_round_trip_and_join_into_train_bin(tmp_path):
    ids = np.arange(1_000, dtype=np.uint16) * 7
    write_shard(tmp_path / "a_train_000000.bin", ids)
    header = np.fromfile(tmp_path / "a_train_000000.bin", dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, 1_000] and not header[3:].any()
    assert (tmp_path / "a_train_000000.bin").stat().st_size == 1024 + 2 * 1_000
    assert np.array_equal(read_shard(tmp_path / "a_train_000000.bin"), ids)
    write_shard(tmp_path / "wide.bin", [70_000, 1], dtype=np.uint32)  # Llama 3's format in llm.c
    assert np.fromfile(tmp_path / "wide.bin", dtype="<i4", count=3).tolist() == [20240801, 7, 2]
    assert read_shard(tmp_path / "wide.bin").tolist() == [70_000, 1]
    # a broken shard says what is wrong with it
    (tmp_path / "cut.bin").write_bytes((tmp_path / "a_train_000000.bin").read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"3,022 bytes, but its header says 1,000 tokens \(3,024 bytes.*truncated"):
        read_shard(tmp_path / "cut.bin")
    (tmp_path / "model.bin").write_bytes(np.array([20240326, 3] + [0] * 254, dtype="<i4").tobytes())
    with pytest.raises(ValueError, match="magic number 20240326, expected 20240520"):
        read_shard(tmp_path / "model.bin")
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="shorter than the 1,024-byte header"):
        read_shard(tmp_path / "short.bin")

    # prepare --shard_tokens writes the token stream train.bin holds, cut into shards
    source = FIXTURES / "shakespeare_char" / "input_head.txt"
    prepare(source, tmp_path / "bins", tokenizer="gpt2")
    info = prepare(source, tmp_path / "shards", tokenizer="gpt2", shard_tokens="5K", num_proc=2)
    names = sorted(p.name for p in (tmp_path / "shards").glob("*.bin"))
    assert (
        names[0] == "shard_train_000000.bin"
        and names[-1] == "shard_val_000000.bin"
        and len(names) == 1 + -(-info["train"] // 5_000)
    )
    assert all(
        len(read_shard(tmp_path / "shards" / name)) == 5_000 for name in names[:-2]
    )  # full but the last of each split
    assert split_bytes(tmp_path / "shards") == split_bytes(tmp_path / "bins")
    assert TokenData(tmp_path / "shards").layout == "shards" and info["layout"] == "shards"


def test_windows_are_drawn_over_all_shards_and_one_shard_draws_train_bins(tmp_path):
    import torch

    # llm.c's own folder layout (dev/data/fineweb.py): val is shard 0, the train shards follow; no data_info.json
    llmc = tmp_path / "fineweb10B"
    llmc.mkdir()
    parts = [np.arange(0, 100), np.arange(1_000, 1_300), np.arange(5_000, 5_040), np.arange(9_000, 9_005)]
    write_shard(llmc / "fineweb_val_000000.bin", np.arange(20_000, 20_100))
    for i, part in enumerate(parts):
        write_shard(llmc / f"fineweb_train_{i + 1:06d}.bin", part)
    data = TokenData(llmc)
    assert data.vocab_size is None and data.tokenizer().convert_tokens_to_ids(GPT2_EOS) == 50256  # GPT-2, as llm.c
    assert data.window_counts("train", 16).tolist() == [84, 284, 24, 0]  # the 5-token shard holds no window
    x, y = data.windows("train", torch.tensor([0, 83, 84, 367, 368, 391]), 16)
    assert x[:, 0].tolist() == [0, 83, 1_000, 1_283, 5_000, 5_023] and torch.equal(x[:, 1:], y[:, :-1])
    generator = torch.Generator().manual_seed(0)
    x, y = data.random_batch("train", 16, 500, generator)
    assert ((y - x) == 1).all()  # every window lies inside one shard (ids count up by one there)
    assert len({int(start) // 1_000 for start in x[:, 0]}) == 3  # and all three shards with windows are drawn from
    # a folder of one train shard draws the windows train.bin draws, from the same generator
    one = tmp_path / "one"
    one.mkdir()
    write_shard(one / "x_train_000000.bin", parts[1])
    write_shard(one / "x_val_000000.bin", parts[0])
    (tmp_path / "bin").mkdir()
    parts[1].astype(np.uint16).tofile(tmp_path / "bin" / "train.bin")
    parts[0].astype(np.uint16).tofile(tmp_path / "bin" / "val.bin")
    a = TokenData(one).random_batch("train", 16, 8, torch.Generator().manual_seed(3), world=2, rank=1)
    b = TokenData(tmp_path / "bin").random_batch("train", 16, 8, torch.Generator().manual_seed(3), world=2, rank=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# -- training on shards ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory):
    """Char-level shards of 20,000 tokens of 100,000 characters of Shakespeare; a 20-iteration run on them,
    and the same run cut at its checkpoint at 10 and resumed (dropout on: the restored random state counts)."""
    root = tmp_path_factory.mktemp("shards")
    prepare(FIXTURES / "shakespeare_char" / "input_head.txt", root / "data", tokenizer="char", shard_tokens=20_000)
    settings = dict(max_iters=20, lr_decay_iters=20, eval_interval=10, always_save_checkpoint=True, dropout=0.1)
    full = train(tiny(root / "data", root / "full", **settings))
    train(tiny(root / "data", root / "cut", **{**settings, "max_iters": 10}))
    resumed = train(tiny(root / "data", root / "cut", init_from="resume", **settings))
    return root, full, resumed


def test_training_on_a_shard_folder(shard_runs):
    root, full, _ = shard_runs
    data = TokenData(root / "data")
    assert len(data.shards["train"]) == 5 and data.vocab_size == 65  # meta.pkl beside the shards
    history = full["history"]
    assert [h["iter"] for h in history] == [0, 10, 20] and history[-1]["val"] < history[0]["val"] - 0.5
    assert (root / "full" / "model.safetensors").is_file() and str(root / "data") in (
        root / "full" / "README.md"
    ).read_text()


def test_resume_on_shards_is_bit_exact(shard_runs):
    root, full, resumed = shard_runs
    a, b = step_losses(root / "full"), step_losses(root / "cut")
    assert sorted(a) == list(range(21)) and all(a[it] == b[it] for it in a)  # bit-exact
    assert val_losses(root / "full") == val_losses(root / "cut")[:2] + val_losses(root / "cut")[-1:]
    assert resumed["history"][-1]["val"] == full["history"][-1]["val"]


def test_a_broken_shard_folder_fails_before_training(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(FIXTURES / "shakespeare_char", folder)
    write_shard(folder / "a_train_000000.bin", np.arange(100))
    with pytest.raises(FileNotFoundError, match=r"missing \['train.bin', 'val.bin'\], and no token shards"):
        train(tiny(folder, tmp_path / "out"))
    write_shard(folder / "a_val_000000.bin", np.arange(10))
    with pytest.raises(ValueError, match="the longest val shard holds 10 tokens: too few for block_size 32"):
        train(tiny(folder, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["nanogpt", "shards"])
def test_block_size_plus_one_tokens_hold_one_window(tmp_path, layout):
    """block_size + 1 tokens hold one window, x = ids[0:T] and y = ids[1:T+1] (nanoGPT's get_batch draws its
    start from torch.randint(len(data) - block_size): 0); block_size tokens hold none."""
    T = 8
    for split in ("train", "val"):
        if layout == "nanogpt":
            np.arange(T + 1, dtype=np.uint16).tofile(tmp_path / f"{split}.bin")
        else:  # the window lies in the first shard; the second is too short to hold one
            write_shard(tmp_path / f"a_{split}_000000.bin", np.arange(T + 1))
            write_shard(tmp_path / f"a_{split}_000001.bin", np.arange(100, 100 + T))
    data = TokenData(tmp_path)
    data.check_block_size(T)
    x, y = data.random_batch("train", T, 3, torch.Generator().manual_seed(0))
    assert x.tolist() == [list(range(T))] * 3 and y.tolist() == [list(range(1, T + 1))] * 3
    for split, batches in evaluation_windows(data, T, batch_size=2, eval_iters=2).items():
        for starts in batches:
            x, y = data.windows(split, starts, T)
            assert x.tolist() == [list(range(T))] * 2 and y.tolist() == [list(range(1, T + 1))] * 2
    with pytest.raises(ValueError, match=f"holds {T + 1} tokens: too few for block_size {T + 1}"):
        data.check_block_size(T + 1)


def test_the_trainer_imports_only_the_token_reader():
    """The trainer reads tokens (data/tokens.py): none of `prepare`'s machinery, datasets or tiktoken is imported."""
    code = (
        "import json, sys; import hf_nanogpt.train, hf_nanogpt.data.tokens; print(json.dumps(sorted("
        "m for m in sys.modules if m.split('.')[0] in ('datasets', 'tiktoken') or m.startswith('hf_nanogpt.data'))))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert loaded == ["hf_nanogpt.data", "hf_nanogpt.data.shards", "hf_nanogpt.data.tokens"]
