"""An offline conversation set, as `make demo`'s corpus is: questions about the Python standard library answered
with the first sentence of each function's or class's docstring, from the interpreter running this.

    {"messages": [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "What does json.dumps do?"},
                  {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}]}

Every name gets one such conversation, with a question phrased one of a few ways (seeded), and names of one
module are also paired into two-turn conversations ("And json.loads?"). About one name in ten is held out
(by a hash of its name, so a held-out function is never seen in training, whatever the seed), and
`held_out_report` measures on those what fine-tuning changed: the loss on the assistant's tokens and how
often greedy decoding ends its turn. The set depends on the Python release (docstrings change; `os` also on
the platform), not on the machine's state: only the modules in MODULES are imported, none with side effects
on import.

`python -m hf_nanogpt.chat_demo` runs it end to end, offline: a BPE model of the standard library's source
(`make demo`'s corpus, with `prepare --tokenizer bpe:VOCAB`; `--base MODEL` starts from a model of yours
instead), these conversations prepared with its tokenizer, fine-tuned with the loss on the assistant's tokens,
and `held_out_report` before and after (docs/chat.md has a run and its transcript).

    python -m hf_nanogpt.chat_demo [--out_dir out/chat_demo] [--base MODEL] [--pretrain_iters 1500] ...
"""

import argparse
import importlib
import inspect
import json
import os
import random
import re
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .chat import end_of_turn_id
from .conversion.common import atomic_output_file
from .data.tokens import IGNORE_INDEX
from .training.evaluation import token_losses

SYSTEM = "You answer questions about Python's standard library in one sentence."
MODULES = (
    "base64", "bisect", "calendar", "collections", "colorsys", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "html", "inspect",
    "io", "ipaddress", "itertools", "json", "keyword", "math", "operator", "os", "os.path", "pathlib", "pprint",
    "random", "re", "secrets", "shlex", "shutil", "statistics", "string", "struct", "tempfile", "textwrap", "time",
    "typing", "unicodedata", "urllib.parse", "uuid", "zipfile", "zlib",
)
HELD_OUT_PERCENT = 10  # of the names, chosen by a hash of the name
SPLITS = ("train", "held_out")

QUESTIONS = {  # how a first question is put, for a function and for a class
    "function": ("What does {} do?", "What is {} for?", "Explain {} in one sentence.",
                 "In one sentence, what does {} do?"),
    "class": ("What is {}?", "What is {} for?", "Explain {} in one sentence.", "What does the {} class do?"),
}
FOLLOW_UPS = ("And {}?", "What about {}?", "And {}, in one sentence?")

MAX_ANSWER_CHARS = 160  # a longer first sentence is rarely one a small model should learn to say
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.")
RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`json.dumps` -> json.dumps
RST_CODE = re.compile(r"`{1,2}([^`]+)`{1,2}")  # ``obj`` -> obj


def first_sentence(doc: str | None, short_name: str) -> str | None:
    """The docstring's first sentence, on one line, with reST markup dropped and leading signature paragraphs
    (`chain(*iterables) --> chain object`) skipped; None where the docstring is empty or not plain ASCII or has
    no short first sentence that starts with a capital letter."""
    if not doc or not doc.isascii():
        return None
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    while paragraphs and paragraphs[0].startswith(f"{short_name}("):  # signature lines of C functions
        paragraphs.pop(0)
    if not paragraphs:
        return None
    text = RST_CODE.sub(r"\1", RST_ROLE.sub(r"\1", paragraphs[0]))
    for match in re.finditer(r"[.!?](?=\s|$)", text):
        sentence = text[: match.end()]
        if not sentence.endswith(ABBREVIATIONS):
            break
    else:
        return None
    if not (sentence[0].isupper() and 12 <= len(sentence) <= MAX_ANSWER_CHARS) or ">>>" in sentence:
        return None
    return sentence


def docstring_answers(modules: Iterable[str] = MODULES) -> list[tuple[str, str, str]]:
    """(name, "function" | "class", answer) for each public function and class of `modules` (its __all__, else
    what it defines) that has a usable first sentence (`first_sentence`), in module order and sorted names.
    Exceptions are left out: their docstrings rarely say what they are for."""
    answers = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None)
        if public is None:  # what the module defines, in Python or in its C accelerator (bisect's in _bisect)
            own = {module.__name__, f"_{module.__name__}"}
            public = [n for n, obj in vars(module).items() if getattr(obj, "__module__", None) in own]
        for short_name in sorted(n for n in set(public) if not n.startswith("_")):
            obj = getattr(module, short_name, None)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                kind = "class"
            elif inspect.isroutine(obj):
                kind = "function"
            else:
                continue
            answer = first_sentence(obj.__doc__, short_name)
            if answer is not None:
                answers.append((f"{module_name}.{short_name}", kind, answer))
    return answers


def is_held_out(name: str) -> bool:
    """Whether `name` ("json.dumps") belongs to the held-out split: a hash of the name, the same on any machine
    and for any seed."""
    return zlib.crc32(name.encode()) % 100 < HELD_OUT_PERCENT


def docstring_conversations(seed: int = 0, split: str = "train", modules: Iterable[str] = MODULES) -> list[dict]:
    """The conversations of one split ("train" or "held_out"), as {"messages": [...]}: one per name, and one
    with two turns per pair of names of one module (paired at random), in a seeded random order. The same
    seed gives the same list; names never cross splits (`is_held_out`)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}.")
    rng = random.Random(seed)
    by_module: dict[str, list[tuple[str, str, str]]] = {}
    for name, kind, answer in docstring_answers(modules):
        if is_held_out(name) == (split == "held_out"):
            by_module.setdefault(name.rsplit(".", 1)[0], []).append((name, kind, answer))
    conversations = []
    for entries in by_module.values():
        for name, kind, answer in entries:
            question = rng.choice(QUESTIONS[kind]).format(name)
            conversations.append(conversation([(question, answer)]))
        paired = rng.sample(entries, len(entries))
        for (name, kind, answer), (next_name, _, next_answer) in zip(paired[::2], paired[1::2]):
            question, follow_up = rng.choice(QUESTIONS[kind]).format(name), rng.choice(FOLLOW_UPS).format(next_name)
            conversations.append(conversation([(question, answer), (follow_up, next_answer)]))
    rng.shuffle(conversations)
    return conversations


def conversation(turns: list[tuple[str, str]]) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def write_conversations(conversations: Iterable[dict], path: str | os.PathLike) -> int:
    """`conversations` as JSON Lines (one {"messages": [...]} a line, the `messages` column `hf-nanogpt prepare`
    reads), written atomically; returns how many."""
    count = 0
    with atomic_output_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in conversations:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


@torch.no_grad()
def held_out_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Iterable[dict],
    max_new_tokens: int = 48,
    samples: int = 3,
) -> dict:
    """What a chat model does on conversations it was not trained on:

    - loss: mean nats per assistant token (its replies and their <|im_end|>, the tokens of
      `apply_chat_template`'s assistant mask), over all the conversations' assistant tokens;
    - ends_turn: the fraction of last turns where greedy decoding from the prompt (the conversation up to its
      last question) writes <|im_end|> within `max_new_tokens`; exact: the fraction that writes the reference;
    - samples: the first `samples` of (question, reference, reply).

    A conversation longer than the model's context (config.max_position_embeddings) is counted in `skipped`."""
    was_training = model.training
    model.eval()
    context = model.config.max_position_embeddings
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    nats, tokens, ended, exact, replies, skipped = 0.0, 0, 0, 0, [], 0
    for item in conversations:
        messages = item["messages"]
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"a conversation ends with a {messages[-1]['role']!r} message: expected the reply.")
        full = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        if len(full["input_ids"]) > context or len(prompt) >= context:
            skipped += 1
            continue
        ids = torch.tensor([full["input_ids"]], device=model.device)  # (1, T)
        taught = torch.tensor([full["assistant_masks"]], device=model.device, dtype=torch.bool)  # (1, T)
        targets = ids[:, 1:].masked_fill(~taught[:, 1:], IGNORE_INDEX)  # the assistant's tokens only, as training
        nats += token_losses(model, ids[:, :-1], targets)[1].sum().item()
        tokens += int(taught[:, 1:].sum())

        prompt_ids = torch.tensor([prompt], device=model.device)
        new = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            # a total length, as a folder's generation_config.json sets one (max_new_tokens beside it would warn)
            max_length=min(len(prompt) + max_new_tokens, context),
            max_new_tokens=None,
            do_sample=False,
            temperature=None,
            top_k=None,
            eos_token_id=eot,
            pad_token_id=pad,
        )
        new = new[0, len(prompt):].tolist()
        reply = tokenizer.decode(new[: new.index(eot)] if eot in new else new, skip_special_tokens=True)
        ended += eot in new
        exact += eot in new and reply.strip() == messages[-1]["content"].strip()
        replies.append({"question": messages[-2]["content"], "reference": messages[-1]["content"], "reply": reply})
    model.train(was_training)
    scored = len(replies)
    return {
        "conversations": scored,
        "skipped": skipped,
        "assistant_tokens": tokens,
        "loss": nats / tokens if tokens else float("nan"),
        "ends_turn": ended / scored if scored else float("nan"),
        "exact": exact / scored if scored else float("nan"),
        "samples": replies[:samples],
    }


# ---------------------------------------------------------------------------------------------------
# python -m hf_nanogpt.chat_demo: from the standard library's source to a chat model, offline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/chat_demo", help="everything the run writes goes under it")
    p.add_argument("--base", default=None, help="a BPE model folder to fine-tune instead of pretraining one")
    p.add_argument("--vocab", type=int, default=2048, help="the pretrained model's BPE (bpe:VOCAB)")
    p.add_argument("--max_chars", type=int, default=2_000_000, help="standard-library source to pretrain on")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pretrain_iters", type=int, default=1500)
    p.add_argument("--finetune_iters", type=int, default=600)
    p.add_argument("--held_out", type=int, default=100, help="held-out conversations the report scores")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def run_config(args, iters: int, **values):
    """The demo's training settings for a run of `iters` iterations (warm-up, decay, evaluations scaled to it)."""
    from .train import TrainConfig

    settings = dict(
        max_iters=iters,
        lr_decay_iters=iters,
        warmup_iters=max(iters // 20, 1),
        eval_interval=max(iters // 4, 1),
        eval_iters=20,
        log_interval=10,
        always_save_checkpoint=False,
        gradient_accumulation_steps=1,
        batch_size=args.batch_size,
        block_size=args.block_size,
        dropout=0.0,
        learning_rate=1e-3,
        min_lr=1e-4,
        beta2=0.99,
        device="cpu",
        compile=False,
        seed=args.seed,
        log_with="none",
    )
    settings.update(values)
    return TrainConfig(**settings)


def main(argv=None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data.writing import prepare
    from .demo import stdlib_corpus
    from .train import train
    from .training.model import grow_for_chat

    args = parse_args(argv)
    root, started = Path(args.out_dir), time.time()
    root.mkdir(parents=True, exist_ok=True)

    # 1. the base model: a BPE GPT of the standard library's source, unless one is given
    base = args.base
    if base is None:
        corpus = root / "stdlib.txt"
        corpus.write_text(stdlib_corpus(args.max_chars), encoding="utf-8")
        prepare(corpus, root / "data_stdlib", tokenizer=f"bpe:{args.vocab}", overwrite=True)
        base = str(root / "base")
        train(
            run_config(
                args,
                args.pretrain_iters,
                out_dir=base,
                data_dir=str(root / "data_stdlib"),
                dataset="python-stdlib",
                n_layer=args.n_layer,
                n_head=args.n_head,
                n_embd=args.n_embd,
            )
        )

    # 2. the conversations, prepared with the base model's tokenizer and the chat format
    held_out = docstring_conversations(args.seed, "held_out")[: args.held_out]
    count = write_conversations(docstring_conversations(args.seed, "train"), root / "chat.jsonl")
    write_conversations(held_out, root / "chat_held_out.jsonl")
    print(f"conversations: {count:,} to train on, {len(held_out)} held out -> {root / 'chat.jsonl'}")
    prepare(root / "chat.jsonl", root / "data_chat", tokenizer=base, overwrite=True)
    tokenizer = AutoTokenizer.from_pretrained(root / "data_chat" / "tokenizer")

    # 3. before: the base model, its embedding grown for the turn markers as the trainer grows it
    model = AutoModelForCausalLM.from_pretrained(base)
    grow_for_chat(model, tokenizer, args.seed)
    before = held_out_report(model, tokenizer, held_out, args.max_new_tokens)

    # 4. fine-tune: the loss on the assistant's tokens only (the data's mask)
    train(
        run_config(
            args,
            args.finetune_iters,
            init_from=base,
            out_dir=str(root / "chat"),
            data_dir=str(root / "data_chat"),
            dataset="python-stdlib-docstring-conversations",
            learning_rate=3e-4,
            min_lr=3e-5,
        )
    )

    # 5. after: the chat model as a user loads it
    chat_model = AutoModelForCausalLM.from_pretrained(root / "chat")
    after = held_out_report(chat_model, AutoTokenizer.from_pretrained(root / "chat"), held_out, args.max_new_tokens)

    print("-" * 60)
    print(f"held-out conversations ({before['conversations']} scored, functions never seen in fine-tuning):")
    print("                                before    after")
    print(f"  loss, nats per assistant token {before['loss']:8.3f} {after['loss']:8.3f}")
    print(f"  ends its turn                  {before['ends_turn']:8.0%} {after['ends_turn']:8.0%}")
    print(f"  the reference reply, exactly   {before['exact']:8.0%} {after['exact']:8.0%}")
    for sample in after["samples"]:
        print(f"you> {sample['question']}\nassistant> {sample['reply']}\n   (docstring: {sample['reference']})")
    print("-" * 60)
    print(f"chat model: {root / 'chat'}; talk to it: hf-nanogpt chat {root / 'chat'}")
    print(f"chat demo took {time.time() - started:.0f} s")
    return {"before": before, "after": after, "chat_model": str(root / "chat"), "base": base}


__all__ = [
    "HELD_OUT_PERCENT",
    "MODULES",
    "SYSTEM",
    "docstring_answers",
    "docstring_conversations",
    "first_sentence",
    "held_out_report",
    "is_held_out",
    "main",
    "write_conversations",
]


if __name__ == "__main__":
    main(sys.argv[1:])
