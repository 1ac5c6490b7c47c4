"""Conversations in (issue 25): `hf-nanogpt prepare` of a messages column writes the chat template's ids and a
loss mask beside each token file; bad rows are counted, never dropped silently; TokenData turns the mask into
-100 targets, and a text folder draws the batches it always drew."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from hf_nanogpt import cli
from hf_nanogpt.chat import add_chat_format, has_chat_format
from hf_nanogpt.data.shards import read_shard
from hf_nanogpt.data.tokens import SPLITS, TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.tokenization import GPT2_EOS, char_tokenizer, gpt2_tokenizer

datasets = pytest.importorskip("datasets")

WORDS = ["Hola", "json.dumps", "qué", "tal?", "日本語", "😀", "\n", "\n\n", "  ", "x = 1", "'s", "42", "Be", "brief."]


def conversation(seed: int) -> list[dict]:
    """A conversation: maybe a system turn, then one to three user/assistant exchanges (the last reply maybe left
    out), contents of words, unicode, newlines and spaces."""
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(WORDS) + rng.choice(["", " "]) for _ in range(rng.randint(1, 12)))

    turns = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        turns += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
    return turns


CONVERSATIONS = [conversation(i) for i in range(40)]


@pytest.fixture(scope="module")
def chat_tok():
    return add_chat_format(gpt2_tokenizer())


def expected(tok, conversations: list, val: list[bool]) -> dict[str, tuple[bytes, bytes]]:
    """Each split's ids and mask: apply_chat_template's input_ids and assistant_masks of each conversation, then
    <|endoftext|> (mask 0)."""
    eot = tok.convert_tokens_to_ids(GPT2_EOS)
    ids, mask = {"train": [], "val": []}, {"train": [], "val": []}
    for messages, is_val in zip(conversations, val):
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        split = "val" if is_val else "train"
        ids[split] += out["input_ids"] + [eot]
        mask[split] += out["assistant_masks"] + [0]
    return {
        name: (np.array(ids[name], np.uint16).tobytes(), np.array(mask[name], np.uint8).tobytes()) for name in ids
    }


def written(folder) -> dict[str, tuple[bytes, bytes]]:
    """Each split's train.bin/val.bin and train.mask/val.mask, as bytes."""
    return {name: ((folder / f"{name}.bin").read_bytes(), (folder / f"{name}.mask").read_bytes()) for name in SPLITS}


def write_jsonl(path, rows: list, column: str = "messages") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({column: row, "id": i}) + "\n" for i, row in enumerate(rows))


# -- conversations in --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_proc", [1, 2])
def test_jsonl_gives_the_templates_ids_and_assistant_mask_whatever_the_processes(tmp_path, chat_tok, num_proc):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS)
    info = prepare(tmp_path / "chat.jsonl", tmp_path / "data", tokenizer="gpt2", num_proc=num_proc, max_memory="4KB")
    every_10th = [i % 10 == 9 for i in range(40)]  # local data files stream: every 10th conversation validates
    assert written(tmp_path / "data") == expected(chat_tok, CONVERSATIONS, every_10th)
    assert info["chat"] is True and info["chat_format"] == "chatml" and info["messages_column"] == "messages"
    assert info["conversations"] == {"train": 36, "val": 4} and sum(info["bad_rows"].values()) == 0
    assert info["taught_tokens"]["train"] == sum((tmp_path / "data" / "train.mask").read_bytes())
    assert info["max_tokens"] == 1024 and info["vocab_size"] == 50259 and info["tokenizer_dir"] == "tokenizer"
    assert "val_tokens_per_byte" not in info  # markers and role names would count against the contents' bytes
    saved = AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer")  # the trainer writes it into the model
    assert has_chat_format(saved) and has_chat_format(TokenData(tmp_path / "data").tokenizer())


def test_num_proc_1_and_2_write_the_same_bytes(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 3)
    for n in (1, 2):
        prepare(tmp_path / "chat.jsonl", tmp_path / f"p{n}", tokenizer="gpt2", num_proc=n, max_memory="4KB")
    assert written(tmp_path / "p1") == written(tmp_path / "p2")


def test_a_saved_data_set_and_a_folder_of_files(tmp_path, chat_tok):
    datasets.Dataset.from_dict({"messages": CONVERSATIONS, "n": list(range(40))}).save_to_disk(tmp_path / "saved")
    prepare(tmp_path / "saved", tmp_path / "from_saved", tokenizer="gpt2", num_proc=2, max_memory="4KB")
    first_36 = [i >= 36 for i in range(40)]  # 40 rows known before reading: the first 90% train
    assert written(tmp_path / "from_saved") == expected(chat_tok, CONVERSATIONS, first_36)
    (tmp_path / "folder").mkdir()  # read in order of path, a stream: rows numbered across the files
    write_jsonl(tmp_path / "folder" / "a.jsonl", CONVERSATIONS[:25])
    write_jsonl(tmp_path / "folder" / "b.jsonl", CONVERSATIONS[25:])
    prepare(tmp_path / "folder", tmp_path / "from_folder", tokenizer="gpt2", val_fraction=0.25)
    assert written(tmp_path / "from_folder") == expected(chat_tok, CONVERSATIONS, [i % 4 == 3 for i in range(40)])


def test_the_messages_column_by_another_name_through_the_cli(tmp_path, chat_tok):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS[:10], column="conversation")
    args = ["prepare", str(tmp_path / "chat.jsonl"), str(tmp_path / "data"), "--tokenizer", "gpt2"]
    assert cli.main([*args, "--messages_column", "conversation"]) == 0
    assert written(tmp_path / "data") == expected(chat_tok, CONVERSATIONS[:10], [i == 9 for i in range(10)])
    with pytest.raises(SystemExit) as exit_info:  # the default name: neither a text nor a messages column
        cli.main([*args[:2], str(tmp_path / "other"), *args[3:]])
    assert exit_info.value.code == 2


# -- bad rows ----------------------------------------------------------------------------------------------------


def model_folder(path, n_positions: int):
    """What --tokenizer MODEL reads of a model folder: its tokenizer and config.json's context."""
    gpt2_tokenizer().save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": n_positions}))
    return path


def test_bad_rows_are_counted_with_their_row_numbers_and_left_out(tmp_path, chat_tok):
    good = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hi {i}"}] for i in range(40)]
    long_reply = [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "word " * 100}]
    bad = {
        3: ("no_assistant_turn", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]),
        4: ("no_assistant_turn", []),
        5: ("unknown_role", [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "ok"}]),
        6: ("content_not_text", [{"role": "user", "content": 42}, {"role": "assistant", "content": "ok"}]),
        7: ("content_not_text", [{"role": "user"}, {"role": "assistant", "content": "ok"}]),
        8: ("malformed", "hi there"),
        10: ("malformed", [["user", "hi"], ["assistant", "hello"]]),
        11: ("malformed", None),
        12: ("marker_in_content", [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "c"}]),
        13: ("marker_in_content", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": GPT2_EOS}]),
        **{row: ("too_long", long_reply) for row in (14, 15, 16, 17, 18, 20, 21)},
    }
    rows = [bad[i][1] if i in bad else messages for i, messages in enumerate(good)]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    lines = []
    info = prepare(
        tmp_path / "chat.jsonl", tmp_path / "data", tokenizer=model_folder(tmp_path / "model", 64), log=lines.append
    )
    reasons = [reason for reason, _ in bad.values()]
    assert info["bad_rows"] == {
        reason: reasons.count(reason)
        for reason in ("malformed", "unknown_role", "content_not_text", "marker_in_content", "no_assistant_turn")
    } | {"too_long": 7}
    assert info["first_bad_rows"] == {
        "malformed": [8, 10, 11],
        "unknown_role": [5],
        "content_not_text": [6, 7],
        "marker_in_content": [12, 13],
        "no_assistant_turn": [3, 4],
        "too_long": [14, 15, 16, 17, 18],
    }
    context = f"n_positions in {tmp_path / 'model' / 'config.json'}"
    assert info["max_tokens"] == 64 and info["max_tokens_from"] == context
    assert "skipped 3 rows, messages not a list of {role, content} dicts: rows 8, 10, 11" in lines
    assert "skipped 1 row, a role other than system, user, assistant: row 5" in lines
    assert (
        f"skipped 7 rows, more than 64 tokens ({context}): rows 14, 15, 16, 17, 18, ..."
    ) in lines
    assert f"conversations: {40 - len(bad) - 4} train and 4 val, {len(bad)} bad rows skipped" in lines[1]
    kept = [i for i in range(40) if i not in bad]  # every 10th validates (9, 19, 29, 39): all good
    assert written(tmp_path / "data") == expected(chat_tok, [good[i] for i in kept], [i % 10 == 9 for i in kept])


def test_every_row_bad_is_an_error_and_writes_nothing(tmp_path, capsys):
    rows = [[{"role": "user", "content": "hi"}]] * 3 + [[{"role": "bot", "content": ""}]]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare", str(tmp_path / "chat.jsonl"), str(tmp_path / "data"), "--tokenizer", "gpt2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "every one of its 4 rows is bad, nothing to train on" in err
    assert "skipped 3 rows, no assistant turn (nothing to learn): rows 0, 1, 2" in err
    assert not (tmp_path / "data").exists()


def test_a_char_level_model_is_refused(tmp_path, capsys):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS[:4])
    char_tokenizer("abc").save_pretrained(tmp_path / "char_model")
    for tokenizer, message in (
        ("char", "a char-level vocabulary cannot take: pass --tokenizer MODEL"),  # the default --tokenizer
        (str(tmp_path / "char_model"), "a char-level vocabulary (3 characters) cannot take the chat format"),
        ("bpe:300", "not a BPE trained on them"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["prepare", str(tmp_path / "chat.jsonl"), str(tmp_path / "data"), "--tokenizer", tokenizer])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, tokenizer
    assert not (tmp_path / "data").exists()


# -- what the trainer reads --------------------------------------------------------------------------------------


def targets(ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, block_size: int) -> np.ndarray:
    """y by hand: each window's next tokens, -100 where their mask is 0."""
    index = positions[:, None] + np.arange(1, block_size + 1)
    return np.where(mask[index] == 1, ids[index].astype(np.int64), -100)


def test_windows_give_minus_100_where_the_mask_is_0(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 3)
    prepare(tmp_path / "chat.jsonl", tmp_path / "bins", tokenizer="gpt2")
    data = TokenData(tmp_path / "bins")
    assert data.chat and data.layout == "nanogpt"
    ids = np.fromfile(tmp_path / "bins" / "train.bin", dtype=np.uint16)
    mask = np.fromfile(tmp_path / "bins" / "train.mask", dtype=np.uint8)
    T = 32
    starts = data.random_starts("train", T, 64, torch.Generator().manual_seed(0))
    x, y = data.windows("train", starts, T)
    positions = starts.numpy()
    assert np.array_equal(x.numpy(), ids[positions[:, None] + np.arange(T)])  # x as nanoGPT's get_batch
    assert np.array_equal(y.numpy(), targets(ids, mask, positions, T))
    assert (y == -100).any() and (y != -100).any()
    # shards: a mask per shard, no header, cut where the shard is; windows never cross a shard's end
    prepare(tmp_path / "chat.jsonl", tmp_path / "shards", tokenizer="gpt2", shard_tokens=1_000)
    shards = TokenData(tmp_path / "shards")
    files = sorted((tmp_path / "shards").glob("shard_train_*.bin"))
    assert shards.chat and shards.layout == "shards" and len(files) > 2
    for path in files:
        assert path.with_suffix(".mask").stat().st_size == len(read_shard(path))
    assert np.array_equal(np.concatenate([read_shard(path) for path in files]), ids)  # the same stream, cut
    joined = np.concatenate([np.fromfile(path.with_suffix(".mask"), dtype=np.uint8) for path in files])
    assert np.array_equal(joined, mask)
    starts = shards.random_starts("train", T, 64, torch.Generator().manual_seed(1))
    x, y = shards.windows("train", starts, T)
    counts = shards.window_counts("train", T)  # a window start number -> (shard, offset) -> position in train.bin
    which = np.searchsorted(np.cumsum(counts), starts.numpy(), side="right")
    offsets = starts.numpy() - (np.cumsum(counts) - counts)[which]
    positions = np.cumsum([0, *map(len, shards.shards["train"])])[which] + offsets
    assert np.array_equal(y.numpy(), targets(ids, mask, positions, T))


def test_a_missing_or_short_mask_says_which_file(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS[:10])
    prepare(tmp_path / "chat.jsonl", tmp_path / "data", tokenizer="gpt2")
    shutil.copytree(tmp_path / "data", tmp_path / "short")
    (tmp_path / "data" / "val.mask").unlink()
    with pytest.raises(FileNotFoundError, match=r"val.mask: missing\. .* holds conversations"):
        TokenData(tmp_path / "data")
    mask = (tmp_path / "short" / "train.mask").read_bytes()
    (tmp_path / "short" / "train.mask").write_bytes(mask[:-1])
    with pytest.raises(ValueError, match=rf"train.mask: {len(mask) - 1:,} bytes, but train.bin holds {len(mask):,}"):
        TokenData(tmp_path / "short")


@pytest.mark.parametrize("shard_tokens", [None, 5_000])
def test_a_text_folder_draws_exactly_nanogpts_batches(tmp_path, shard_tokens):
    text = "".join(f"line {i}: some text to tokenize\n" for i in range(2_000))
    (tmp_path / "input.txt").write_text(text)
    prepare(tmp_path / "input.txt", tmp_path / "data", tokenizer="gpt2", shard_tokens=shard_tokens)
    assert not list((tmp_path / "data").glob("*.mask"))
    data = TokenData(tmp_path / "data")
    assert not data.chat and data.masks is None
    T, B = 16, 8
    x, y = data.random_batch("train", T, B, torch.Generator().manual_seed(7))
    if shard_tokens is None:  # nanoGPT's get_batch, from the same generator
        ids = np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16)
        ix = torch.randint(len(ids) - T, (B,), generator=torch.Generator().manual_seed(7))
        assert torch.equal(x, torch.stack([torch.from_numpy(ids[i : i + T].astype(np.int64)) for i in ix]))
        assert torch.equal(y, torch.stack([torch.from_numpy(ids[i + 1 : i + 1 + T].astype(np.int64)) for i in ix]))
    assert torch.equal(x[:, 1:], y[:, :-1]) and (y >= 0).all()


def test_one_conversation_trains_whole(tmp_path, chat_tok):
    datasets.Dataset.from_dict({"messages": CONVERSATIONS[:1]}).save_to_disk(tmp_path / "one")
    info = prepare(tmp_path / "one", tmp_path / "data", tokenizer="gpt2")
    assert info["conversations"] == {"train": 1, "val": 0}  # a text of one document splits by characters; not this
    assert written(tmp_path / "data") == expected(chat_tok, CONVERSATIONS[:1], [False])
