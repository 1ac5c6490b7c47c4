"""Conversations -> ids and a loss mask, for `prepare`: the MODEL's tokenizer with the chat format
(`chat_tokenizer`, hf_nanogpt/chat.py), each row's messages checked (`conversation_problem`: a bad row is counted
under its reason and left out, never encoded), rows gathered into pieces (`conversation_pieces`) and encoded by
the chat template in the worker processes of encoding.py (`ChatEncoder`), with the assistant mask
`apply_chat_template` gives: 1 on the tokens the model learns to write (each reply and its <|im_end|>).
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..chat import CHAT_TOKENS, ROLES, add_chat_format
from ..tokenization import GPT2_EOS, bpe_vocab_size, eot_id, load_tokenizer
from .encoding import ENCODE_BATCH, Encoded, utf8_bytes

# a bad row's reason -> what the log says of it (data_info.json's "bad_rows" counts them under these names)
BAD_ROWS = {
    "malformed": "messages not a list of {role, content} dicts",
    "unknown_role": f"a role other than {', '.join(ROLES)}",
    "content_not_text": "a content that is not a string",
    "marker_in_content": f"a turn marker or {GPT2_EOS} written in a content (it would be read as that token)",
    "no_assistant_turn": "no assistant turn (nothing to learn)",
    "too_long": "more tokens than the model's context",
}
FIRST_ROWS = 5  # row numbers the report shows per reason
MAX_CONTEXT = 1 << 20  # a tokenizer's model_max_length above this is transformers' "no limit" (1e30), not a context


def chat_tokenizer(spec: str | Path):
    """The MODEL's tokenizer (whatever `load_tokenizer` takes: "gpt2", a model or tokenizer folder) with the chat
    format added (`add_chat_format`, which refuses char level)."""
    if str(spec) == "char":
        raise ValueError(
            "conversations are encoded with a model's tokenizer and the chat format's turn markers, which a "
            "char-level vocabulary cannot take: pass --tokenizer MODEL (a model folder, a tokenizer folder or gpt2)."
        )
    if bpe_vocab_size(spec) is not None:
        raise ValueError(
            f"--tokenizer {spec}: conversations are encoded with the tokenizer of the model they fine-tune, not a BPE "
            f"trained on them; pass --tokenizer MODEL (a model folder, a tokenizer folder or gpt2). To train a BPE, "
            f"prepare a text corpus with --tokenizer {spec} first and pretrain on it."
        )
    return add_chat_format(load_tokenizer(spec))


def context_tokens(spec: str | Path, tokenizer) -> tuple[int | None, str]:
    """The most tokens a conversation may have, and where that number comes from: a model folder's config.json
    (block_size, n_positions or max_position_embeddings), else the tokenizer's model_max_length (GPT-2's 1024)
    where it is a real context, else no limit."""
    config = Path(spec) / "config.json"
    if str(spec) != "gpt2" and config.is_file():  # "gpt2" is the bundled tokenizer, not a folder of that name
        values = json.loads(config.read_text())
        for key in ("block_size", "n_positions", "max_position_embeddings"):
            if isinstance(values.get(key), int) and values[key] > 0:
                return values[key], f"{key} in {config}"
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n <= MAX_CONTEXT:
        return n, "the tokenizer's model_max_length"
    return None, "no limit: neither a config.json nor a tokenizer model_max_length gives a context"


def conversation_problem(messages, markers: Iterable[str]) -> str | None:
    """Why a row's messages cannot be trained on (a key of BAD_ROWS), or None. `markers`: the texts of the
    tokenizer's added tokens, which a content may not hold."""
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        return "malformed"
    if any(message.get("role") not in ROLES for message in messages):
        return "unknown_role"
    if any(not isinstance(message.get("content"), str) for message in messages):
        return "content_not_text"
    if any(marker in message["content"] for message in messages for marker in markers):
        return "marker_in_content"
    if not any(message["role"] == "assistant" for message in messages):
        return "no_assistant_turn"
    return None


def content_chars(messages) -> int:
    """The characters of a row's contents (at least 1): what a piece's size counts."""
    if not isinstance(messages, list):
        return 1
    texts = [m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return max(1, sum(map(len, texts)))


@dataclass
class ChatPiece:
    """Rows of one split, encoded together in a worker: (row number, its messages) each."""

    split: str
    rows: list[tuple[int, object]] = field(default_factory=list)
    chars: int = 0


def conversation_pieces(routed: Iterable[tuple[str, object, bool]], piece_chars: int) -> Iterator[ChatPiece]:
    """The routed rows (numbered from 0 in reading order) gathered into pieces of about `piece_chars` characters
    of contents, of one split; a conversation is never cut."""
    filling: dict[str, ChatPiece] = {}
    for row, (split, messages, _) in enumerate(routed):
        piece = filling.setdefault(split, ChatPiece(split))
        piece.rows.append((row, messages))
        piece.chars += content_chars(messages)
        if piece.chars >= piece_chars:
            yield piece
            filling[split] = ChatPiece(split)
    yield from (piece for piece in filling.values() if piece.rows)


class ChatEncoder:
    """ChatPieces -> ids and mask, in any process (the tokenizer pickles; a forked worker shares it). Each good
    conversation is `apply_chat_template(..., return_assistant_tokens_mask=True)`'s input_ids and assistant_masks,
    followed by <|endoftext|> (mask 0) as a text document is; a bad row is only counted. `max_tokens`: longer
    conversations are bad rows ("too_long")."""

    name = "chat template"

    def __init__(self, tokenizer, dtype: np.dtype, max_tokens: int | None):
        self.tokenizer, self.dtype, self.max_tokens = tokenizer, dtype, max_tokens
        self.eot = eot_id(tokenizer)
        special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        self.markers = sorted(special | set(CHAT_TOKENS))  # what the tokenizer would read as a token in a content

    def start(self) -> None:
        pass  # the tokenizer is ready as it is

    def __call__(self, piece: ChatPiece) -> Encoded:
        good, bad = [], []
        for row, messages in piece.rows:
            problem = conversation_problem(messages, self.markers)
            if problem is None:
                good.append((row, messages))
            else:
                bad.append((problem, row))
        ids, mask, nbytes, kept = [], [], 0, 0
        for i in range(0, len(good), ENCODE_BATCH):
            batch = good[i : i + ENCODE_BATCH]
            out = self.tokenizer.apply_chat_template(
                [messages for _, messages in batch],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                tokenizer_kwargs={"verbose": False},  # no warning of a long conversation: "too_long" counts them
            )
            for (row, messages), conversation, taught in zip(batch, out["input_ids"], out["assistant_masks"]):
                if self.max_tokens is not None and len(conversation) > self.max_tokens:
                    bad.append(("too_long", row))
                    continue
                ids.extend(conversation)
                mask.extend(taught)
                if self.eot is not None:
                    ids.append(self.eot)
                    mask.append(0)
                nbytes += sum(utf8_bytes(message["content"]) for message in messages)
                kept += 1
        return Encoded(
            piece.split,
            np.array(ids, dtype=self.dtype),
            nbytes,
            piece.chars,
            None,
            mask=np.array(mask, dtype=np.uint8),
            bad=sorted(bad, key=lambda reason_row: reason_row[1]),
            conversations=kept,
        )


class BadRows:
    """The bad rows met so far: a count per reason and the first row numbers of each."""

    def __init__(self):
        self.counts = dict.fromkeys(BAD_ROWS, 0)
        self.first: dict[str, list[int]] = {reason: [] for reason in BAD_ROWS}

    def add(self, bad: Iterable[tuple[str, int]]) -> None:
        for reason, row in bad:
            self.counts[reason] += 1
            self.first[reason] = sorted([*self.first[reason], row])[:FIRST_ROWS]  # pieces of the splits interleave

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self, too_long: str) -> list[str]:
        """One line per reason met: 'skipped 3 rows, no assistant turn (nothing to learn): rows 1, 5, 9'.
        `too_long`: the limit, in words, for the "too_long" line."""
        lines = []
        for reason, count in self.counts.items():
            if count:
                what = f"more than {too_long}" if reason == "too_long" else BAD_ROWS[reason]
                rows = ", ".join(map(str, self.first[reason])) + (", ..." if count > FIRST_ROWS else "")
                lines.append(
                    f"skipped {count:,} row{'s' if count > 1 else ''}, {what}: row{'s' if count > 1 else ''} {rows}"
                )
        return lines


__all__ = [
    "BAD_ROWS",
    "BadRows",
    "ChatEncoder",
    "ChatPiece",
    "chat_tokenizer",
    "context_tokens",
    "conversation_pieces",
    "conversation_problem",
]
