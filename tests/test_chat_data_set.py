"""The offline conversation set (hf_nanogpt/chat_demo.py): docstring answers, the split, the JSONL and the report."""

import json
import re

import pytest
import torch

from helpers import tiny_model, trained_bpe
from hf_nanogpt.chat import add_chat_format, end_of_turn_id, vocab_rows
from hf_nanogpt.chat_demo import (
    SYSTEM,
    docstring_answers,
    docstring_conversations,
    first_sentence,
    held_out_report,
    is_held_out,
    write_conversations,
)

NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")  # json.dumps, os.path.join, urllib.parse.quote


@pytest.fixture(scope="module")
def splits():
    return {split: docstring_conversations(seed=0, split=split) for split in ("train", "held_out")}


def asked(conversations: list[dict]) -> set[str]:
    return {NAME.search(m["content"])[0] for c in conversations for m in c["messages"] if m["role"] == "user"}


def test_first_sentence_cleans_or_refuses():
    assert first_sentence("Serialize ``obj`` to a JSON formatted ``str``.\n\nMore.", "dumps") == (
        "Serialize obj to a JSON formatted str."
    )
    assert first_sentence("chain(*iterables) --> chain object\n\nReturn a chain object.", "chain") == (
        "Return a chain object."
    )
    assert first_sentence("Use :func:`json.dumps`, e.g. for\n   logs. Then more.", "f") == (
        "Use json.dumps, e.g. for logs."
    )
    for doc in (None, "", "make an iterator.", "Ok.", "No end of sentence", "Caf\u00e9 au lait.", "A" * 200 + "."):
        assert first_sentence(doc, "f") is None, doc


def test_the_set_is_deterministic_and_the_split_is_disjoint_by_name(splits):
    assert docstring_conversations(seed=0, split="train") == splits["train"]
    other = docstring_conversations(seed=1, split="train")
    assert other != splits["train"] and asked(other) == asked(splits["train"])  # phrasing and order, same names
    train, held_out = asked(splits["train"]), asked(splits["held_out"])
    assert train.isdisjoint(held_out)
    assert all(is_held_out(name) for name in held_out) and not any(is_held_out(name) for name in train)
    names = {name for name, _, _ in docstring_answers()}
    assert train | held_out == names
    assert {"json.dumps", "os.path.join", "math.sqrt", "collections.Counter"} <= names
    assert 0.05 < len(held_out) / len(names) < 0.15
    assert len(splits["train"]) > 500 and len(splits["held_out"]) > 30
    with pytest.raises(ValueError, match="held_out"):
        docstring_conversations(split="test")


def test_messages_are_well_formed(splits):
    answers = {name: answer for name, _, answer in docstring_answers()}
    turns = set()
    for item in splits["train"] + splits["held_out"]:
        messages = item["messages"]
        assert list(item) == ["messages"]
        assert messages[0] == {"role": "system", "content": SYSTEM}
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * ((len(messages) - 1) // 2)
        turns.add(len(messages))
        for question, answer in zip(messages[1::2], messages[2::2]):
            assert answer["content"] == answers[NAME.search(question["content"])[0]]
            assert answer["content"][-1] in ".!?" and "\n" not in answer["content"] and answer["content"].isascii()
    assert turns == {3, 5}  # one question, or a question and a follow-up


def test_write_conversations_is_jsonl_with_a_messages_column(splits, tmp_path):
    path = tmp_path / "chat" / "held_out.jsonl"
    assert write_conversations(splits["held_out"], path) == len(splits["held_out"])
    assert [json.loads(line) for line in path.read_text().splitlines()] == splits["held_out"]
    assert [p.name for p in path.parent.iterdir()] == ["held_out.jsonl"]  # no temporary file left


@pytest.fixture(scope="module")
def tiny_chat(splits):
    texts = [m["content"] for c in splits["train"][:200] for m in c["messages"]]
    tokenizer = add_chat_format(trained_bpe(texts, 400))
    model = tiny_model(vocab_size=vocab_rows(tokenizer, 0), block_size=256)
    return model, tokenizer


def test_held_out_report_on_a_random_model(splits, tiny_chat):
    model, tokenizer = tiny_chat
    conversations = splits["held_out"][:6]
    model.train()
    report = held_out_report(model, tokenizer, conversations, max_new_tokens=8, samples=2)
    assert model.training  # left as it was found
    model.eval()
    assert report["conversations"] == 6 and report["skipped"] == 0
    masks = [tokenizer.apply_chat_template(c["messages"], return_dict=True, return_assistant_tokens_mask=True)
             ["assistant_masks"] for c in conversations]
    assert report["assistant_tokens"] == sum(map(sum, masks))
    assert abs(report["loss"] - torch.log(torch.tensor(float(model.config.vocab_size))).item()) < 1.0  # near uniform
    assert 0.0 <= report["ends_turn"] <= 1.0 and report["exact"] == 0.0
    assert [s["reference"] for s in report["samples"]] == [c["messages"][-1]["content"] for c in conversations[:2]]

    # the loss is the model's own over the assistant tokens (labels -100 elsewhere), for one conversation
    one = tokenizer.apply_chat_template(conversations[0]["messages"], return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = torch.tensor([one["input_ids"]])
    labels = torch.where(torch.tensor([one["assistant_masks"]]).bool(), ids, -100)
    with torch.no_grad():
        expected = model(ids, labels=labels).loss.item()
    assert held_out_report(model, tokenizer, conversations[:1], max_new_tokens=1)["loss"] == pytest.approx(expected)


def test_held_out_report_counts_a_model_that_ends_its_turn_at_once(splits, tiny_chat):
    model, tokenizer = tiny_chat
    model = tiny_model(vocab_size=model.config.vocab_size, block_size=256)
    eot = end_of_turn_id(tokenizer)
    with torch.no_grad():  # every position's hidden state points at <|im_end|>'s (largest) embedding row
        wte = model.transformer.wte.weight
        wte[eot] *= 10 * wte.norm(dim=1).max() / wte[eot].norm()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(wte[eot])
    report = held_out_report(model, tokenizer, splits["held_out"][:3], max_new_tokens=4)
    assert report["ends_turn"] == 1.0 and report["exact"] == 0.0
    assert [s["reply"] for s in report["samples"]] == ["", "", ""]


def test_a_conversation_longer_than_the_context_is_skipped(splits, tiny_chat):
    _, tokenizer = tiny_chat
    model = tiny_model(vocab_size=vocab_rows(tokenizer, 0), block_size=16)
    report = held_out_report(model, tokenizer, splits["held_out"][:2])
    assert report["skipped"] == 2 and report["conversations"] == 0 and report["samples"] == []


def test_a_conversation_must_end_with_the_reply(splits, tiny_chat):
    model, tokenizer = tiny_chat
    question_only = {"messages": splits["held_out"][0]["messages"][:-1]}
    with pytest.raises(ValueError, match="ends with a 'user' message: expected the reply"):
        held_out_report(model, tokenizer, [question_only])
