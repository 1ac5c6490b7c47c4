"""The chat format (hf_nanogpt/chat.py): turn markers, the template and its assistant mask."""

import pytest
from transformers import AutoTokenizer

from helpers import trained_bpe
from hf_nanogpt.chat import CHAT_TOKENS, IM_END, add_chat_format, end_of_turn_id, has_chat_format, vocab_rows
from hf_nanogpt.tokenization import char_tokenizer, gpt2_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Qué es json.dumps?"},
    {"role": "assistant", "content": "Serialize obj to a JSON formatted str."},
    {"role": "user", "content": "And loads?"},
    {"role": "assistant", "content": "Deserialize s to a Python object."},
]


def test_gpt2_markers_take_nanogpts_padded_rows_and_the_mask_covers_replies_and_their_end():
    tok = add_chat_format(gpt2_tokenizer())
    assert tok.convert_tokens_to_ids(list(CHAT_TOKENS)) == [50257, 50258]
    assert vocab_rows(tok, 50304) == 50304  # no embedding grows
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tok.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQué es json.dumps?<|im_end|>\n"
        "<|im_start|>assistant\nSerialize obj to a JSON formatted str.<|im_end|>\n"
        "<|im_start|>user\nAnd loads?<|im_end|>\n<|im_start|>assistant\nDeserialize s to a Python object.<|im_end|>\n"
    )
    taught = tok.decode([i for i, m in zip(ids, mask) if m])
    assert taught == f"Serialize obj to a JSON formatted str.{IM_END}Deserialize s to a Python object.{IM_END}"
    assert sum(1 for i, m in zip(ids, mask) if m and i == end_of_turn_id(tok)) == 2
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_format_survives_save_and_load_with_transformers_alone(tmp_path):
    tok = add_chat_format(gpt2_tokenizer())
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert has_chat_format(again) and len(again) == 50259
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == tok.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    assert add_chat_format(again) is again and len(again) == 50259  # adding twice changes nothing


def test_a_trained_bpe_grows_by_the_markers_and_char_level_is_refused():
    tok = trained_bpe(["hello world, a small corpus of words\n"] * 50 + ["other words here\n"] * 50, 300)
    rows = len(tok)
    add_chat_format(tok)
    assert len(tok) == rows + 2
    assert vocab_rows(tok, rows) == -(-(rows + 2) // 64) * 64
    with pytest.raises(ValueError, match="char-level vocabulary .* bpe:VOCAB"):
        add_chat_format(char_tokenizer("abc"))
