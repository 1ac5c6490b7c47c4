"""`hf-nanogpt chat MODEL`: talk to a chat model, one turn at a time, its replies streamed as they come.

    you> What does json.dumps do?
    assistant> Serialize obj to a JSON formatted str.
    you> /reset

The whole conversation (after the --system message, if any) goes to the model at every turn, written with the
tokenizer's chat template; when it and the reply's --max_new_tokens would pass block_size, the oldest turns are
left out (said on stderr). Commands: /reset clears the history, /exit or /quit leave. At a terminal, Ctrl-C stops
a reply and a second Ctrl-C, or Ctrl-D, leaves; from a pipe each line is a user turn and each reply one printout.
"""

import sys

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from .chat import END_OF_TURN, end_of_turn_id

COMMANDS = {"/reset": "clear the history", "/exit": "leave", "/quit": "leave"}
DEFAULT_MAX_NEW_TOKENS = 256  # the text-generation pipeline's default, when half of block_size holds it


def require_chat_template(tokenizer: PreTrainedTokenizerBase, model_id: str) -> None:
    if not tokenizer.chat_template:
        raise ValueError(
            f"{model_id}: its tokenizer has no chat template, so the model knows no turns to take. Fine-tune it on "
            f"conversations first (docs/chat.md), or continue a text with `hf-nanogpt generate {model_id} "
            f"--prompt TEXT`."
        )


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The generation config's eos ids, with the end of a turn (<|im_end|>) where the tokenizer has it: a folder
    whose generation_config.json predates the chat format still stops after one reply."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if END_OF_TURN in tokenizer.get_vocab() and end_of_turn_id(tokenizer) not in ids:
        ids.insert(0, end_of_turn_id(tokenizer))
    return ids


def sampling_options(temperature: float | None, top_k: int | None) -> dict:
    """generate()'s sampling arguments: temperature 0 is greedy; None keeps the generation config's value."""
    if temperature is not None and temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {temperature}.")
    if temperature == 0:
        return {"do_sample": False}
    options = {"do_sample": True}
    if temperature is not None:
        options["temperature"] = temperature
    if top_k is not None:
        options["top_k"] = top_k  # 0: all tokens
    return options


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """The prompt for the next reply: the messages through the chat template, then the assistant's turn opened.
    (Not verbose: a conversation longer than block_size is no mistake here, fit_history cuts it.)"""
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, tokenizer_kwargs={"verbose": False}
    )
    return encoded["input_ids"]


def fit_history(
    tokenizer: PreTrainedTokenizerBase, system: list[dict], history: list[dict], room: int
) -> tuple[list[dict], list[int]]:
    """`history` without its oldest turns (a user message and the replies after it), as few left out as make the
    prompt for system + history at most `room` tokens, and that prompt's ids. The latest user message always
    stays: the caller checks that the prompt fits."""
    while True:
        ids = encode_conversation(tokenizer, system + history)
        later_users = [i for i, message in enumerate(history) if message["role"] == "user" and i > 0]
        if len(ids) <= room or not later_users:
            return history, ids
        history = history[later_users[0] :]


def count_turns(history: list[dict]) -> int:
    return sum(message["role"] == "user" for message in history)


def reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos: list[int],
    sampling: dict,
) -> str:
    """The model's reply to a prompt, streamed to stdout as it comes (and a newline after it)."""
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            # a total length, as the folder's generation_config.json sets one (max_new_tokens beside it would warn)
            max_length=len(prompt_ids) + max_new_tokens,
            max_new_tokens=None,
            eos_token_id=eos,
            streamer=streamer,
            **sampling,
        )
    return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


def say(text: str) -> None:
    """A note for the person at the keyboard, on stderr (stdout holds only the replies)."""
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    system: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    interactive: bool | None = None,
) -> int:
    """The conversation loop over stdin; returns the exit status (0). `interactive` (default: stdin is a terminal)
    shows the prompts "you> " and "assistant> " and lets Ctrl-C stop a reply."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    block_size = model.config.max_position_embeddings
    max_new = min(DEFAULT_MAX_NEW_TOKENS, block_size // 2) if max_new_tokens is None else max_new_tokens
    if not 0 < max_new < block_size:
        raise ValueError(
            f"--max_new_tokens must be from 1 to {block_size - 1} (the model's block_size {block_size} holds the "
            f"prompt and the reply), got {max_new}."
        )
    room = block_size - max_new  # for the prompt
    system_messages = [{"role": "system", "content": system}] if system else []
    opening = len(encode_conversation(tokenizer, system_messages + [{"role": "user", "content": ""}]))
    if opening > room:
        raise ValueError(
            f"--system and the turn markers take {opening} tokens: with --max_new_tokens {max_new} that leaves "
            f"nothing for a message in block_size {block_size}. Shorten --system or lower --max_new_tokens."
        )
    eos, sampling = stop_ids(model, tokenizer), sampling_options(temperature, top_k)
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        say(f"Chatting with a model of block_size {block_size}. /reset clears the history, /exit leaves.")

    history: list[dict] = []
    interrupted = False  # the last key was Ctrl-C: another one leaves
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:  # Ctrl-D, or the end of piped input
            if interactive:
                print()
            return 0
        except KeyboardInterrupt:
            if interactive:
                print()
            if interrupted or not interactive:
                return 0
            say("(Ctrl-C again or Ctrl-D leaves; /exit too)")
            interrupted = True
            continue
        interrupted = False
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            say("(history cleared)")
            continue
        if text.startswith("/") and " " not in text:
            say(f"(unknown command {text}: {', '.join(f'{c} ({what})' for c, what in COMMANDS.items())})")
            continue

        asked = history + [{"role": "user", "content": text}]
        kept, prompt_ids = fit_history(tokenizer, system_messages, asked, room)
        if len(prompt_ids) > room:
            say(
                f"(this message makes a prompt of {len(prompt_ids)} tokens, more than the {room} that leave room "
                f"for --max_new_tokens {max_new} in block_size {block_size}: shorten it, or lower --max_new_tokens)"
            )
            continue
        dropped = count_turns(asked) - count_turns(kept)
        if dropped:
            say(
                f"(history: left out the oldest {dropped} turn{'s' if dropped > 1 else ''} so that the prompt, "
                f"{len(prompt_ids)} tokens, and --max_new_tokens {max_new} fit block_size {block_size})"
            )
        history = kept
        if interactive:
            print("assistant> ", end="", flush=True)
        try:
            answer = reply(model, tokenizer, prompt_ids, max_new, eos, sampling)
        except KeyboardInterrupt:
            print()
            history.pop()
            say("(reply stopped; this turn is left out of the history)")
            interrupted = True
            continue
        history.append({"role": "assistant", "content": answer})


__all__ = ["chat", "fit_history", "require_chat_template", "sampling_options", "stop_ids"]
