import pickle

import pytest
import torch
from transformers import AutoTokenizer

from helpers import FIXTURES, NANOGPT_FIXTURES, trained_bpe
from hf_nanogpt.tokenization import (
    CHAR_UNKNOWN,
    GPT2_BPE_DIR,
    GPT2_EOS,
    char_tokenizer,
    eot_id,
    gpt2_tokenizer,
    is_gpt2_vocab,
    token_byte_lengths,
    token_bytes,
)

MIXED_TEXT = "Café naïve — नमस्ते दुनिया 😀🎉 ROMEO:\n  spaced  out"  # 1-, 2-, 3- and 4-byte characters


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


# -- bytes per token (the trainer's bits per byte) -------------------------------------------------------------


def test_gpt2_token_byte_lengths_add_up_to_the_texts_bytes(gpt2_tok):
    lengths = token_byte_lengths(gpt2_tok, 50304)  # nanoGPT's padded vocabulary
    assert lengths.dtype == torch.int64 and lengths.shape == (50304,)
    ids = gpt2_tok(MIXED_TEXT).input_ids
    assert lengths[ids].sum().item() == len(MIXED_TEXT.encode("utf-8"))
    # an emoji's 4 bytes are split over byte-level tokens; each counts its own bytes
    assert all(lengths[i] > 0 for i in ids)
    assert lengths[gpt2_tok.convert_tokens_to_ids(GPT2_EOS)] == 0  # a special token stands for no text
    assert lengths[50257:].sum() == 0  # the padded rows stand for nothing
    assert lengths[:50256].min() > 0
    ids = gpt2_tok(MIXED_TEXT + GPT2_EOS + "end").input_ids
    assert lengths[ids].sum().item() == len((MIXED_TEXT + "end").encode("utf-8"))


def test_byte_level_bpe_in_a_sequence_is_exact():
    """A byte-level BPE trained as tokenizers trains one, its ByteLevel inside a Sequence pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[GPT2_EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([MIXED_TEXT] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=GPT2_EOS)
    lengths = token_byte_lengths(tok, 320)
    text = MIXED_TEXT[::-1] + " 2024"  # other merges than the training text's
    assert lengths[tok(text).input_ids].sum().item() == len(text.encode("utf-8"))
    assert lengths[tok.convert_tokens_to_ids(GPT2_EOS)] == 0 and lengths[len(tok) :].sum() == 0


def test_char_level_token_byte_lengths():
    tok = char_tokenizer(set(MIXED_TEXT))
    lengths = token_byte_lengths(tok, 64)
    assert lengths[tok(MIXED_TEXT).input_ids].sum().item() == len(MIXED_TEXT.encode("utf-8"))
    assert lengths[tok.convert_tokens_to_ids("😀")] == 4 and lengths[tok.convert_tokens_to_ids("a")] == 1
    assert lengths[len(tok) :].sum() == 0


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
