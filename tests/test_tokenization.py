import pickle

import pytest
from transformers import AutoTokenizer

from helpers import FIXTURES, NANOGPT_FIXTURES, trained_bpe
from hf_nanogpt.tokenization import (
    CHAR_UNKNOWN,
    GPT2_BPE_DIR,
    char_tokenizer,
    eot_id,
    gpt2_tokenizer,
    is_gpt2_vocab,
    token_bytes,
)


def test_gpt2_tokenizer_from_openai_files(gpt2_tok):
    assert gpt2_tok("Hello world").input_ids == [15496, 995]
    assert len(gpt2_tok) == 50257
    assert gpt2_tok.eos_token_id == gpt2_tok.bos_token_id == gpt2_tok.pad_token_id == 50256


def test_gpt2_tokenizer_from_transformers_file_names(tmp_path):
    (tmp_path / "vocab.json").write_bytes((GPT2_BPE_DIR / "encoder.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((GPT2_BPE_DIR / "vocab.bpe").read_bytes())
    assert gpt2_tokenizer(tmp_path)("Hello world").input_ids == [15496, 995]


def test_gpt2_tokenizer_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        gpt2_tokenizer(tmp_path)


def test_gpt2_tokenizer_roundtrip_via_autotokenizer(gpt2_tok, tmp_path):
    gpt2_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "ROMEO: But soft, what light through yonder window breaks?"
    assert loaded(text).input_ids == gpt2_tok(text).input_ids
    assert loaded.decode(loaded(text).input_ids) == text


@pytest.fixture(scope="module")
def meta():
    with open(NANOGPT_FIXTURES / "A_char_nobias" / "meta.pkl", "rb") as f:
        return pickle.load(f)


def test_char_tokenizer_matches_nanogpt_ids(meta):
    tok = char_tokenizer(meta["stoi"])
    assert len(tok) == meta["vocab_size"]
    text = "".join(meta["itos"][i] for i in range(meta["vocab_size"]))
    assert tok(text).input_ids == list(range(meta["vocab_size"]))
    # same ids from the character set alone: nanoGPT sorts the characters
    assert char_tokenizer(meta["stoi"].keys())(text).input_ids == tok(text).input_ids


def test_char_tokenizer_roundtrip_and_autotokenizer(meta, tmp_path):
    tok = char_tokenizer(meta["stoi"])
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n  It is the east."
    ids = tok(text).input_ids
    assert ids == [meta["stoi"][c] for c in text]
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text).input_ids == ids and loaded.decode(ids) == text


def test_char_tokenizer_refuses_unknown_characters(meta):
    tok = char_tokenizer(meta["stoi"])
    assert "é" not in meta["stoi"]
    with pytest.raises(Exception, match=CHAR_UNKNOWN):
        tok("héllo")


def test_char_tokenizer_rejects_bad_vocabularies():
    with pytest.raises(ValueError, match="single characters"):
        char_tokenizer({"ab": 0, "c": 1})
    with pytest.raises(ValueError, match="no gaps"):
        char_tokenizer({"a": 0, "b": 2})


def test_what_exports_ask_of_a_tokenizer(gpt2_tok, tmp_path):
    gpt2_tok.save_pretrained(tmp_path / "gpt2")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "gpt2")  # another class, the same vocabulary
    trained = trained_bpe([(FIXTURES / "shakespeare_char" / "input_head.txt").read_text()], 300)
    char = char_tokenizer("aé\n")
    assert [is_gpt2_vocab(t) for t in (gpt2_tok, reloaded, trained, char, None)] == [True, True, False, False, False]
    assert [eot_id(t) for t in (gpt2_tok, trained, char)] == [50256, 0, None]
    assert token_bytes(char) == [b"\n", b"a", "é".encode()]
    table = token_bytes(trained)
    assert len(table) == 300 and table[0] == b"<|endoftext|>" and set(table[1:257]) == {bytes([b]) for b in range(256)}
    ids = trained("ROMEO: ¿qué?\n").input_ids
    assert b"".join(table[i] for i in ids) == "ROMEO: ¿qué?\n".encode()
    assert token_bytes(reloaded)[50256] == b"<|endoftext|>" and token_bytes(reloaded)[220] == b" "
