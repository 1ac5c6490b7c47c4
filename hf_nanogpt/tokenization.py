"""The tokenizers nanoGPT models use, built as `tokenizers`-backed fast tokenizers, and nanoGPT's
meta.pkl vocabulary files.

Every tokenizer saves as tokenizer.json, so `AutoTokenizer.from_pretrained(folder)` loads it without
this package.

- `gpt2_tokenizer`: OpenAI's GPT-2 BPE (what nanoGPT reads through tiktoken) from its two files; the
  files ship with this package, so it works offline.
- `train_bpe_tokenizer`: a BPE of GPT-2's kind (byte level, GPT-2's pre-tokenizer, <|endoftext|>) trained
  on your own text with a vocabulary of your size (`prepare --tokenizer bpe:VOCAB`).
- `char_tokenizer`: nanoGPT's character-level vocabulary (data/shakespeare_char/prepare.py): one id per
  character, ids in sorted-character order unless a `stoi` map says otherwise.
- `read_meta_pkl` / `write_meta_pkl`: nanoGPT's meta.pkl ({vocab_size, itos, stoi}), read without
  running any code a pickle might carry.
- `load_tokenizer`: "gpt2", a meta.pkl, or a folder, as the command line takes them.
- `token_byte_lengths`: how many bytes of text each id stands for (the trainer's bits per byte).
- `token_bytes`, `eot_id`, `is_gpt2_vocab`: what exports to other runtimes need to know of a tokenizer.
"""

import functools
import io
import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

GPT2_EOS = "<|endoftext|>"
GPT2_BPE_DIR = Path(__file__).parent / "assets" / "gpt2_bpe"  # OpenAI's encoder.json and vocab.bpe

# (vocabulary file, merges file) pairs that hold GPT-2 BPE: OpenAI's names, then transformers' names.
GPT2_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))

# Characters outside a char-level vocabulary must not vanish silently (the BPE model would drop them).
# Naming an unknown-token that is not in the vocabulary makes `tokenizers` refuse the text instead, with
# this name in its message: "Unk token `<...>` not found in the vocabulary".
CHAR_UNKNOWN = "<character not in this char-level vocabulary>"

BPE_PREFIX = "bpe:"  # --tokenizer bpe:VOCAB: a BPE trained on the corpus being prepared
BPE_MIN_VOCAB = 256 + 2  # the 256 bytes, <|endoftext|>, and at least one merge
BPE_MAX_VOCAB = 2**20


def gpt2_tokenizer(path: str | Path = GPT2_BPE_DIR) -> PreTrainedTokenizerFast:
    """GPT-2's BPE from a folder holding encoder.json + vocab.bpe (OpenAI) or vocab.json + merges.txt;
    by default the copy of OpenAI's files inside this package.

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


def bpe_vocab_size(spec: str | Path) -> int | None:
    """VOCAB of a "bpe:VOCAB" tokenizer spec; None for any other spec (char, gpt2, a path)."""
    spec = str(spec)
    if not spec.startswith(BPE_PREFIX):
        return None
    size = spec.removeprefix(BPE_PREFIX)
    if not size.isdecimal() or not BPE_MIN_VOCAB <= int(size) <= BPE_MAX_VOCAB:
        raise ValueError(
            f"--tokenizer {spec!r}: expected bpe:VOCAB, VOCAB a whole number of tokens from {BPE_MIN_VOCAB} (the 256 "
            f"bytes, {GPT2_EOS} and one merge) to {BPE_MAX_VOCAB:,}, such as bpe:8192; found {size!r}."
        )
    return int(size)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, show_progress: bool = False, length: int | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE of GPT-2's kind with `vocab_size` tokens (fewer where `texts` hold fewer pairs to merge)
    trained on `texts`: GPT-2's pre-tokenizer (its regex, no prefix space) and no normalizer, the 256 bytes as
    its first alphabet, so that any UTF-8 text round-trips; <|endoftext|> its one special token, as
    bos/eos/unk/pad like `gpt2_tokenizer`. `length`: how many texts, for tokenizers' own progress bar.

    `texts` are read one at a time and only word counts kept, so a corpus streams through in bounded memory;
    tokenizers counts in its own threads (TOKENIZERS_PARALLELISM, RAYON_NUM_THREADS)."""
    if not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB:
        raise ValueError(
            f"vocab_size {vocab_size:,}: a byte-level BPE needs {BPE_MIN_VOCAB} to {BPE_MAX_VOCAB:,} tokens (the 256 "
            f"bytes, {GPT2_EOS} and at least one merge)."
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[GPT2_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer, length=length)
    # GPT2TokenizerFast saves as tokenizer_class "GPT2Tokenizer", which AutoTokenizer resolves in any release
    return GPT2TokenizerFast(
        tokenizer_object=backend,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
    )


def char_tokenizer(
    chars: Iterable[str] | Mapping[str, int], model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
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


def encode_text(tokenizer, text: str, what: str = "the prompt") -> list[int]:
    """Token ids of `text`; a ValueError naming the characters a char-level vocabulary lacks (the tokenizers
    library raises a bare Exception about CHAR_UNKNOWN)."""
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as err:
        if CHAR_UNKNOWN not in str(err):
            raise
        missing = sorted(set(text) - set(tokenizer.get_vocab()))
        raise ValueError(
            f"{what} has characters this model's char-level vocabulary does not have: {''.join(missing)!r}. "
            f"Use only characters of its {len(tokenizer)}-character vocabulary."
        ) from None


def has_gpt2_files(path: Path) -> bool:
    return any((path / v).is_file() and (path / m).is_file() for v, m in GPT2_FILE_PAIRS)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers; refuses every other global (no code runs)."""

    SAFE = {
        ("builtins", name)
        for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "bytes")
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed in meta.pkl")


def read_meta_pkl(path: str | Path) -> dict:
    """nanoGPT's meta.pkl -> {"vocab_size", "stoi", "itos"}, checked for consistency.

    A pickle can run code when loaded; this one is read with an unpickler that admits plain builtins only.
    """
    path = Path(path)
    try:
        meta = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: not a plain nanoGPT meta.pkl: {err}.") from err
    except (EOFError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable meta.pkl (truncated or corrupt?): {err!r}.") from err
    if not isinstance(meta, dict) or not {"stoi", "itos"} <= set(meta):
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: a nanoGPT meta.pkl holds a dict with 'stoi' and 'itos', found {found}.")
    stoi, itos = meta["stoi"], meta["itos"]
    vocab_size = meta.get("vocab_size", len(stoi))
    if not (len(stoi) == len(itos) == vocab_size) or any(itos.get(i) != ch for ch, i in stoi.items()):
        raise ValueError(
            f"{path}: inconsistent vocabulary: vocab_size {vocab_size}, {len(stoi)} stoi entries, {len(itos)} itos "
            f"entries, and stoi/itos must be inverse maps."
        )
    return {"vocab_size": vocab_size, "stoi": dict(stoi), "itos": dict(itos)}


def write_meta_pkl(path: str | Path, stoi: Mapping[str, int]) -> None:
    """Write a meta.pkl exactly as nanoGPT's prepare.py does: {vocab_size, itos, stoi}."""
    meta = {"vocab_size": len(stoi), "itos": {i: ch for ch, i in stoi.items()}, "stoi": dict(stoi)}
    with open(path, "wb") as f:
        pickle.dump(meta, f)


def char_vocab(tokenizer: PreTrainedTokenizerBase) -> dict[str, int] | None:
    """The `stoi` of a character-level tokenizer (every token a single character, no special tokens), else None."""
    vocab = tokenizer.get_vocab()
    if tokenizer.all_special_tokens or not vocab or any(len(token) != 1 for token in vocab):
        return None
    return dict(vocab)


def eot_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id of <|endoftext|>, the token that separates documents (GPT-2's 50256; 0 in a trained BPE), or None
    when the vocabulary has none (char level)."""
    return tokenizer.get_vocab().get(GPT2_EOS)


@functools.cache
def gpt2_vocab() -> dict[str, int]:
    """GPT-2's 50257 tokens -> ids, from the bundled encoder.json (read once; not to be changed)."""
    return json.loads((GPT2_BPE_DIR / "encoder.json").read_text(encoding="utf-8"))


def is_gpt2_vocab(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    """GPT-2's own BPE vocabulary (the bundled encoder.json: the ids tiktoken's "gpt2" gives), whatever the
    tokenizer's class; a BPE trained on other text is not, even with GPT-2's pre-tokenizer."""
    return tokenizer is not None and tokenizer.get_vocab() == gpt2_vocab()


@functools.cache
def byte_decoder() -> dict[str, int]:
    """Byte-level BPE's stand-in character -> the byte it stands for (GPT-2's bytes_to_unicode, inverted)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The bytes each id stands for, ids 0..len(tokenizer)-1, as decoding writes them: a byte-level BPE's
    tokens through `byte_decoder`, a char-level vocabulary's characters and added tokens (<|endoftext|>) as
    UTF-8. A ValueError says why when a tokenizer has no such table (other kinds, ids with gaps)."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"its {len(by_id)} token ids are not 0..{len(by_id) - 1}, with no gaps")
    added = {i: token.content for i, token in tokenizer.added_tokens_decoder.items()}
    if char_vocab(tokenizer) is not None:
        return [by_id[i].encode("utf-8") for i in range(len(by_id))]
    if not is_byte_level(tokenizer):
        raise ValueError(
            f"{type(tokenizer).__name__} is neither a byte-level BPE nor char level, so its tokens have no fixed bytes"
        )
    to_byte, table = byte_decoder(), []
    for i in range(len(by_id)):
        if i in added:
            table.append(added[i].encode("utf-8"))
        elif all(char in to_byte for char in by_id[i]):
            table.append(bytes(to_byte[char] for char in by_id[i]))
        else:
            raise ValueError(f"token {i} ({by_id[i]!r}) has characters outside the byte-level alphabet")
    return table


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """'gpt2' (GPT-2 BPE, bundled), a meta.pkl (char level), a folder with GPT-2 BPE files, or a folder
    with a saved tokenizer (tokenizer.json / tokenizer_config.json)."""
    if str(spec) == "gpt2":
        return gpt2_tokenizer()
    if bpe_vocab_size(spec) is not None:
        raise ValueError(
            f"{spec!r} names a BPE to train, not one to load: `hf-nanogpt prepare INPUT OUT_DIR --tokenizer {spec}` "
            f"trains it on INPUT and saves it in OUT_DIR/tokenizer; load that folder."
        )
    path = Path(spec)
    if path.is_file() and path.suffix == ".pkl":
        return char_tokenizer(read_meta_pkl(path)["stoi"])
    if path.is_dir() and has_gpt2_files(path):
        return gpt2_tokenizer(path)
    if path.is_dir() and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return AutoTokenizer.from_pretrained(path)
    raise ValueError(
        f"Cannot make a tokenizer from {spec!r}: expected 'gpt2', a meta.pkl, or a folder holding "
        f"encoder.json + vocab.bpe, vocab.json + merges.txt, or a saved tokenizer (tokenizer.json)."
    )


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a fast tokenizer's pre-tokenizer or decoder is ByteLevel (GPT-2's BPE and byte-level BPEs trained
    like it), on its own or inside a Sequence."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())

    def byte_level(part: dict | None) -> bool:
        if not part:
            return False
        inner = part.get("pretokenizers") or part.get("decoders") or []
        return part.get("type") == "ByteLevel" or any(byte_level(p) for p in inner)

    return byte_level(spec.get("pre_tokenizer")) or byte_level(spec.get("decoder"))


def is_gpt2_bpe(tokenizer: PreTrainedTokenizerBase) -> bool:
    """A byte-level BPE with GPT-2's pre-tokenizer (the regex, no prefix space) and no normalizer, as GPT-2's own
    and `train_bpe_tokenizer`'s are: a text may be cut before a newline (prepare's `newline_cut`), and llama.cpp's
    "gpt-2" pre-tokenizer reproduces it (GGUF export)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec["model"]["type"] == "BPE"
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space")
        and spec.get("normalizer") is None
    )


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
    """How many bytes of UTF-8 text each id stands for: int64, shape (vocab_size,).

    Exact where `token_bytes` has the table (byte-level BPE, char level); for any other tokenizer the length of
    the id decoded alone, which is approximate (SentencePiece drops a word's leading space, a byte-fallback piece
    decodes to U+FFFD). Special tokens (<|endoftext|>) are 0, as are ids past the tokenizer's (nanoGPT pads
    GPT-2's 50257 rows to 50304): the text has no bytes for them."""
    try:
        table = token_bytes(tokenizer)
    except ValueError:
        table = [tokenizer.decode([i]).encode("utf-8") for i in range(len(tokenizer))]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    lengths = torch.zeros(vocab_size, dtype=torch.int64)
    for i, text in enumerate(table[:vocab_size]):
        if i not in special:
            lengths[i] = len(text)
    return lengths


__all__ = [
    "BPE_MAX_VOCAB",
    "BPE_MIN_VOCAB",
    "CHAR_UNKNOWN",
    "bpe_vocab_size",
    "encode_text",
    "GPT2_BPE_DIR",
    "GPT2_EOS",
    "byte_decoder",
    "char_tokenizer",
    "char_vocab",
    "eot_id",
    "gpt2_tokenizer",
    "gpt2_vocab",
    "is_gpt2_bpe",
    "is_gpt2_vocab",
    "load_tokenizer",
    "read_meta_pkl",
    "token_byte_lengths",
    "token_bytes",
    "train_bpe_tokenizer",
    "write_meta_pkl",
]
