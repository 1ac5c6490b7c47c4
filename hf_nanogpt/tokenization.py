"""The two tokenizers nanoGPT models use, built as `tokenizers`-backed fast tokenizers.

Both save as tokenizer.json, so `AutoTokenizer.from_pretrained(folder)` loads them without this package.

- `gpt2_tokenizer`: OpenAI's GPT-2 BPE (what nanoGPT reads through tiktoken) from its two files.
- `char_tokenizer`: nanoGPT's character-level vocabulary (data/shakespeare_char/prepare.py): one id per
  character, ids in sorted-character order unless a `stoi` map says otherwise.
"""

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

GPT2_EOS = "<|endoftext|>"

# (vocabulary file, merges file) pairs that hold GPT-2 BPE: OpenAI's names, then transformers' names.
GPT2_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))

# Characters outside a char-level vocabulary must not vanish silently (the BPE model would drop them).
# Naming an unknown-token that is not in the vocabulary makes `tokenizers` refuse the text instead, with
# this name in its message: "Unk token `<...>` not found in the vocabulary".
CHAR_UNKNOWN = "<character not in this char-level vocabulary>"


def gpt2_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """GPT-2's BPE from a folder holding encoder.json + vocab.bpe (OpenAI) or vocab.json + merges.txt.

    Pad is set to <|endoftext|>, as GPT-2 has no pad token and batched generation needs one.
    """
    path = Path(path)
    for vocab_name, merges_name in GPT2_FILE_PAIRS:
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            break
    else:
        expected = " or ".join(f"{v} + {m}" for v, m in GPT2_FILE_PAIRS)
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such folder"
        raise FileNotFoundError(f"GPT-2 BPE files not found in {path}: expected {expected}, found {found}.")
    vocab = json.loads((path / vocab_name).read_text(encoding="utf-8"))
    lines = (path / merges_name).read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    # vocab=/merges= and not vocab_file=/merges_file=: the latter silently builds an empty tokenizer in 5.x
    tokenizer = GPT2TokenizerFast(
        vocab=vocab, merges=merges, bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS, pad_token=GPT2_EOS
    )
    tokenizer.model_max_length = 1024
    return tokenizer


def char_tokenizer(chars: Iterable[str] | Mapping[str, int], model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: `chars` is the vocabulary (ids in sorted order, as nanoGPT's
    prepare.py assigns them) or a `stoi` map from character to id (a meta.pkl's).

    Encoding text with a character outside the vocabulary raises an exception naming CHAR_UNKNOWN.
    The vocabulary has no special tokens, so there is no bos/eos/pad: generation runs to max_new_tokens.
    """
    stoi = dict(chars) if isinstance(chars, Mapping) else {ch: i for i, ch in enumerate(sorted(set(chars)))}
    bad = [ch for ch in stoi if len(ch) != 1]
    if bad:
        raise ValueError(f"A char-level vocabulary holds single characters, found {bad[:5]!r}.")
    if sorted(stoi.values()) != list(range(len(stoi))):
        raise ValueError(f"Char-level ids must be 0..{len(stoi) - 1} with no gaps or repeats.")
    # BPE without merges: every character is its own token, with no pre-tokenizer splitting on spaces.
    backend = Tokenizer(models.BPE(vocab=stoi, merges=[], unk_token=CHAR_UNKNOWN))
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


__all__ = ["CHAR_UNKNOWN", "GPT2_EOS", "char_tokenizer", "gpt2_tokenizer"]
