"""The chat format: ChatML's turn markers and a Jinja chat template with `{% generation %}` markers.

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}; it is written as

    <|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\nHello!<|im_end|>\\n

The assistant's content and its <|im_end|> are inside `{% generation %}`, so transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's `assistant_only_loss` mark exactly the
tokens a chat model learns to write, its end of turn included; generation stops at <|im_end|>.

The two markers are special tokens added to a byte-level BPE tokenizer (GPT-2's or one trained by
`prepare --tokenizer bpe:VOCAB`). nanoGPT pads GPT-2's 50,257 tokens to 50,304 rows, so for its models the
markers take unused rows (50257, 50258) and no embedding grows; otherwise `vocab_rows` says how many rows a
model needs. A char-level vocabulary is refused: it has no room for the markers without changing what every
id means to nanoGPT's meta.pkl, and a context of a few hundred characters holds little of a conversation.
"""

from transformers import PreTrainedTokenizerBase

from .tokenization import char_vocab

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
END_OF_TURN = IM_END
ROLES = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def has_chat_format(tokenizer: PreTrainedTokenizerBase) -> bool:
    """The tokenizer has both turn markers as tokens and this package's chat template."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in CHAT_TOKENS) and tokenizer.chat_template == CHAT_TEMPLATE


def add_chat_format(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The turn markers as special tokens (after the existing ids) and CHAT_TEMPLATE, added in place; a
    tokenizer that has them is returned as it is. A char-level vocabulary is refused (ValueError)."""
    if has_chat_format(tokenizer):
        return tokenizer
    if char_vocab(tokenizer) is not None:
        raise ValueError(
            f"a char-level vocabulary ({len(tokenizer)} characters) cannot take the chat format's turn markers "
            f"{IM_START} and {IM_END}: start from a BPE model (GPT-2's, or one trained on a corpus prepared with "
            f"`hf-nanogpt prepare INPUT OUT --tokenizer bpe:VOCAB`)."
        )
    missing = [token for token in CHAT_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.convert_tokens_to_ids(END_OF_TURN)


def vocab_rows(tokenizer: PreTrainedTokenizerBase, rows: int, multiple: int = 64) -> int:
    """The embedding rows a model of `rows` needs for this tokenizer: `rows` where every id fits (GPT-2's
    padded 50,304), else len(tokenizer) rounded up to `multiple`, as nanoGPT pads its vocabulary."""
    needed = len(tokenizer)
    return rows if needed <= rows else -(-needed // multiple) * multiple


__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "END_OF_TURN",
    "IM_END",
    "IM_START",
    "ROLES",
    "add_chat_format",
    "end_of_turn_id",
    "has_chat_format",
    "vocab_rows",
]
