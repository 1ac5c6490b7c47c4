"""Talking to a chat model: the text-generation pipeline on a list of messages (with this package, and through
remote code without it), and `hf-nanogpt chat` (hf_nanogpt/chat_cli.py) from a pipe, in this process and at a
pseudo-terminal."""

import io
import json
import os
import select
import subprocess
import sys
import textwrap
import time

import pytest
import transformers
from transformers import pipeline

from helpers import BLOCK_HF_NANOGPT, HELLO, TWO, chat_model, tiny_model, trained_bpe
from hf_nanogpt import cli
from hf_nanogpt.chat import add_chat_format, end_of_turn_id
from hf_nanogpt.chat_cli import fit_history
from hf_nanogpt.saving import generation_config_for, save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

CLI = [sys.executable, "-m", "hf_nanogpt.cli", "chat"]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    model, tokenizer = chat_model()
    return save_model_folder(model, tmp_path_factory.mktemp("chat") / "model", tokenizer)


@pytest.fixture(scope="module")
def greedy(chat_folder):
    """history -> the pipeline's greedy reply (the assistant's new message's content)."""
    pipe = pipeline("text-generation", model=str(chat_folder))
    assert type(pipe.model).__module__ == "hf_nanogpt.modeling_nanogpt"

    def reply(messages: list[dict], max_new_tokens: int | None = None) -> str:
        """max_new_tokens None: up to the folder's max_length, block_size."""
        prompt = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        length = {} if max_new_tokens is None else {"max_length": len(prompt) + max_new_tokens}
        out = pipe(messages, do_sample=False, **length)[0]["generated_text"]
        assert out[:-1] == messages and out[-1]["role"] == "assistant"
        return out[-1]["content"]

    return reply


def run_cli(argv: list[str], stdin: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """`hf-nanogpt chat ...` in this process, `stdin` piped in: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        status = cli.main(["chat", *argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_a_chat_folder_ends_generation_at_the_end_of_a_turn(chat_folder, greedy):
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_folder)
    config = json.loads((chat_folder / "generation_config.json").read_text())
    assert config["eos_token_id"] == [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    for (question, answer), before in ((HELLO, TWO), (TWO, HELLO)):  # the pipeline applies the template ...
        assert greedy([question], 32) == answer["content"]  # ... and returns the new turn
        assert greedy(before + [question], 32) == answer["content"]
    # GPT-2's BPE: the markers take padded rows 50257 and 50258, the rest of the padding is never generated
    gen = generation_config_for(tiny_model(vocab_size=50304), add_chat_format(gpt2_tokenizer()))
    assert gen.eos_token_id == [50258, 50256] and gen.suppress_tokens == list(range(50259, 50304))


REMOTE_PIPELINE = BLOCK_HF_NANOGPT + textwrap.dedent(
    """
    import json
    from transformers import pipeline
    folder, conversations = sys.argv[1], json.loads(sys.argv[2])
    pipe = pipeline("text-generation", model=folder, trust_remote_code=True)
    replies = [pipe(messages, do_sample=False)[0]["generated_text"] for messages in conversations]
    print(json.dumps({"module": type(pipe.model).__module__, "replies": replies}))
    """
)


def test_the_pipeline_answers_through_remote_code_without_the_package(chat_folder, greedy, tmp_path):
    questions = [HELLO[:1], TWO[:1], HELLO + TWO[:1]]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE, str(chat_folder), json.dumps(questions)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules"), remote["module"]
    for messages, conversation in zip(questions, remote["replies"]):
        assert conversation[:-1] == messages and conversation[-1]["role"] == "assistant"
        assert conversation[-1]["content"] == greedy(messages)  # stopped at <|im_end|>, as here
    assert [c[-1]["content"] for c in remote["replies"]] == ["hi there, friend", "two is a number", "two is a number"]


def test_piped_turns_are_the_pipelines_replies_and_reset_clears_the_history(chat_folder, greedy):
    """A real pipe into the console command: one turn a line, /reset between, end of input -> exit 0."""
    turns = ["hello", "what is two", "/reset", "what is two", "hello"]
    result = subprocess.run(
        [*CLI, str(chat_folder), "--temperature", "0", "--max_new_tokens", "16"],
        input="\n".join(turns) + "\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected, history = [], []
    for turn in turns:
        if turn == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": turn})
        expected.append(greedy(history, 16))
        history.append({"role": "assistant", "content": expected[-1]})
    assert result.stdout == "".join(f"{reply}\n" for reply in expected)
    assert expected == ["hi there, friend", "two is a number", "two is a number", "hi there, friend"]
    assert "(history cleared)" in result.stderr
    assert "left out" not in result.stderr  # all of it fit block_size 64
    for word in ("Traceback", "Warning", "deprecated", "past_key_values"):  # the person sees only our notes
        assert word not in result.stderr, result.stderr[-3000:]


def test_the_oldest_turns_go_when_the_conversation_outgrows_block_size(chat_folder, monkeypatch, capsys):
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_folder)
    system = [{"role": "system", "content": "Be brief."}]
    history = []
    for turn in range(4):
        history += [{"role": "user", "content": f"hello {turn}"}, {"role": "assistant", "content": "hi there"}]
    history.append({"role": "user", "content": "what is two"})
    whole = len(tokenizer.apply_chat_template(system + history, add_generation_prompt=True, tokenizer_kwargs={
        "verbose": False})["input_ids"])  # longer than block_size: no warning
    kept, ids = fit_history(tokenizer, system, history, room=whole - 1)
    assert kept == history[2:] and kept[0]["content"] == "hello 1" and len(ids) < whole
    kept, ids = fit_history(tokenizer, system, history, room=1)  # the latest message stays, the caller says no
    assert kept == [{"role": "user", "content": "what is two"}] and len(ids) > 1
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert len(history) == 9  # the caller's list is left as it was

    # two exchanges and a question are 70 tokens: past block_size 64 and the room that 16 new tokens leave
    status, out, err = run_cli(
        [str(chat_folder), "--temperature", "0", "--max_new_tokens", "16"],
        "hello\nwhat is two\n" * 2 + "hello " * 60 + "\n",  # the last message alone is too long: said, skipped
        monkeypatch, capsys,
    )
    assert status == 0 and out.splitlines() == ["hi there, friend", "two is a number"] * 2
    assert "(this message makes a prompt of" in err and "more than the 48 that leave room" in err
    assert err.count("(history: left out the oldest 1 turn so that the prompt, 45 tokens, and --max_new_tokens 16 "
                     "fit block_size 64)") == 2


def test_ctrl_c_during_a_reply_stops_it_and_leaves_the_turn_out(chat_folder, greedy, monkeypatch, capsys):
    calls = []
    original = transformers.TextStreamer.on_finalized_text

    def interrupt_the_second_reply(self, text, stream_end=False):
        calls.append(self)
        if len({id(streamer) for streamer in calls}) == 2:
            raise KeyboardInterrupt  # as SIGINT would, in the middle of generate()
        original(self, text, stream_end)

    monkeypatch.setattr(transformers.TextStreamer, "on_finalized_text", interrupt_the_second_reply)
    status, out, err = run_cli(
        [str(chat_folder), "--temperature", "0", "--max_new_tokens", "16"], "hello\nwhat is two\nhello\n",
        monkeypatch, capsys,
    )
    assert status == 0 and "(reply stopped; this turn is left out of the history)" in err
    first = greedy(HELLO[:1], 16)
    third = greedy(HELLO + HELLO[:1], 16)  # "what is two" is gone
    assert out == f"{first}\n\n{third}\n"


def test_a_model_without_a_chat_template_and_a_reply_past_block_size_are_clear_errors(
    chat_folder, tmp_path, monkeypatch, capsys
):
    tokenizer = trained_bpe(["hello world, a small corpus of words\n"] * 20, 300)
    folder = save_model_folder(tiny_model(vocab_size=320), tmp_path / "plain", tokenizer)
    status, out, err = run_cli([str(folder)], "hello\n", monkeypatch, capsys)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and "no chat template" in err
    assert "docs/chat.md" in err and f"hf-nanogpt generate {folder}" in err
    status, out, err = run_cli([str(chat_folder), "--max_new_tokens", "64"], "hello\n", monkeypatch, capsys)
    assert status == 2 and err.startswith("error: --max_new_tokens must be from 1 to 63") and out == ""


# a pseudo-terminal's controlling process: SIGINT as a terminal delivers it (a test runner may ignore it)
LAUNCH = (
    "import fcntl, os, signal, sys, termios; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def test_at_a_terminal_ctrl_c_then_ctrl_d_leaves_cleanly(chat_folder):
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *CLI[1:], str(chat_folder), "--temperature", "0"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env={**os.environ, "TERM": "dumb"},
    )
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 120) -> str:
        """What the terminal shows up to and with the next `marker` (everything, at the end: marker b"")."""
        nonlocal seen
        deadline = time.monotonic() + timeout
        while not marker or marker not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {marker!r} in {timeout} s; the terminal shows {seen!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process is gone
                chunk = b""
            if not chunk:
                assert not marker, f"the process ended before {marker!r}: {seen!r}"
                break
            seen += chunk
        end = seen.index(marker) + len(marker) if marker else len(seen)
        shown, seen = seen[:end], seen[end:]
        return shown.decode()

    try:
        assert "/reset clears the history" in read_until(b"you> ")
        os.write(master, b"hello\n")
        assert read_until(b"you> ").endswith("assistant> hi there, friend\r\nyou> ")
        # CPython's input() shows the prompt, then waits in select(): a SIGINT that lands between the two is
        # handled only at the next key, so wait for it to be waiting, as a person's Ctrl-C always does
        time.sleep(1.0)
        os.write(master, b"\x03")  # Ctrl-C at the prompt: a note, the prompt again
        assert "Ctrl-C again or Ctrl-D leaves" in read_until(b"you> ")
        os.write(master, b"\x04")  # Ctrl-D: leave
        rest = read_until(b"")
        assert process.wait(timeout=60) == 0, rest
        assert "Traceback" not in rest
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
