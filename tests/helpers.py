"""Helpers the test files share: `from helpers import tiny_model, ...` (tests/ is on sys.path under pytest).

Imported only once tests/conftest.py has pointed every Hugging Face client at the local test Hub
(it imports huggingface_hub, through transformers); the tokens below are the ones that Hub knows.
"""

import json
import math
import random
import secrets
import socket
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import hf_nanogpt  # noqa: F401  (registers the Auto classes)
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.chat import add_chat_format
from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.tokenization import token_byte_lengths
from hf_nanogpt.training.config import TrainConfig, load_config_file
from hf_nanogpt.training.evaluation import estimate_loss, evaluation_windows

# tokens of the local Hub (the `hub` fixture, tests/hub_server.py); random so that a test can grep
# outputs and files for them
WRITE_TOKEN = "hf_" + secrets.token_hex(17)  # alice, write access
READ_TOKEN = "hf_" + secrets.token_hex(17)  # alice, read-only
OTHER_TOKEN = "hf_" + secrets.token_hex(17)  # bob, write access to his own namespace only
README_TOKEN = "hf_" + secrets.token_hex(17)  # your-name, as the README's examples write it (tests/test_readme.py)
HUB_TOKENS = {
    WRITE_TOKEN: "alice",
    READ_TOKEN: {"name": "alice", "role": "read"},
    OTHER_TOKEN: "bob",
    README_TOKEN: "your-name",
}

FIXTURES = Path(__file__).parent / "fixtures"
NANOGPT_FIXTURES = FIXTURES / "nanogpt"

# The start of a script run in a subprocess that must load models without this package, as someone
# who never installed it would: importing hf_nanogpt fails there.
BLOCK_HF_NANOGPT = textwrap.dedent(
    """
    import importlib.abc, sys
    class NoHfNanogpt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_nanogpt" or name.startswith("hf_nanogpt."):
                raise ImportError("hf_nanogpt is blocked in this process")
    sys.meta_path.insert(0, NoHfNanogpt())
    try:
        import hf_nanogpt
        raise SystemExit("hf_nanogpt should not be importable here")
    except ImportError:
        pass
    """
)


def tiny_config(**overrides) -> NanoGPTConfig:
    kwargs = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, bias=True, dropout=0.0)
    kwargs.update(overrides)
    return NanoGPTConfig(**kwargs)


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> NanoGPTForCausalLM:
    torch.manual_seed(seed)
    model = NanoGPTForCausalLM(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def trained_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, as `hf-nanogpt prepare --tokenizer bpe:VOCAB` trains one."""
    from hf_nanogpt.tokenization import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size)


# conversations `chat_model` learns by heart: greedy decoding answers each of the two questions with its reply,
# first or second in a conversation
HELLO = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there, friend"}]
TWO = [{"role": "user", "content": "what is two"}, {"role": "assistant", "content": "two is a number"}]
CHAT_CONVERSATIONS = [HELLO, TWO, HELLO + TWO, TWO + HELLO]


def chat_model(conversations: list[list[dict]] = CHAT_CONVERSATIONS, steps: int = 100, seed: int = 0, **overrides):
    """(model, tokenizer): a tiny model with a trained BPE and the chat format (hf_nanogpt.chat), overfit on
    `conversations` (in a second or so). Save it with save_model_folder, as the trainer saves a fine-tuned chat
    model: its generation_config.json then ends generation at <|im_end|>."""
    from hf_nanogpt.chat import add_chat_format, vocab_rows

    words = " ".join(message["content"] for conversation in conversations for message in conversation)
    tokenizer = add_chat_format(trained_bpe([words + "\n"] * 20, 300))
    rows = [tokenizer.apply_chat_template(c, return_dict=True)["input_ids"] for c in conversations]
    length = max(map(len, rows))
    x = torch.tensor([row + [tokenizer.pad_token_id] * (length - len(row)) for row in rows])
    y = torch.tensor([row + [-100] * (length - len(row)) for row in rows])
    overrides = {"block_size": 64, **overrides}
    model = tiny_model(seed, vocab_size=vocab_rows(tokenizer, tiny_config().vocab_size), **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's steps are fastest on one thread, the more so on a busy machine
    try:
        for _ in range(steps):
            loss = model(x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tokenizer


def load_nanogpt_fixture(name: str) -> dict:
    """A fixture folder: ckpt (nanoGPT's ckpt.pt contents), inputs, refs and greedy.json."""
    folder = NANOGPT_FIXTURES / name
    return {
        "ckpt": torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=True),
        "inputs": torch.load(folder / "ref_input.pt", map_location="cpu", weights_only=True),
        "refs": torch.load(folder / "ref_logits.pt", map_location="cpu", weights_only=True),
        "greedy": json.loads((folder / "greedy.json").read_text()),
    }


def model_from_nanogpt(ckpt: dict, attn_implementation: str = "sdpa") -> NanoGPTForCausalLM:
    """nanoGPT's model_args -> our config; the state dict loads with no renaming."""
    model = NanoGPTForCausalLM(NanoGPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"], strict=True)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


# -- training runs (tests/test_train.py, test_muon.py, test_distributed.py, test_data_scale.py) ---------------

BIN = Path(sys.executable).parent  # the environment's console scripts (accelerate, hf-nanogpt)


def tiny(char_data: Path, out_dir: Path, **overrides) -> TrainConfig:
    """A small, fast run of the shakespeare_char_cpu recipe."""
    values = dict(load_config_file("shakespeare_char_cpu"))
    values.update(
        out_dir=str(out_dir),
        data_dir=str(char_data),
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=4,
        max_iters=30,
        lr_decay_iters=30,
        warmup_iters=5,
        eval_interval=10,
        eval_iters=4,
        log_interval=1,
        log_with="none",
        learning_rate=3e-3,
        dtype="float32",
    )
    values.update(overrides)
    return TrainConfig(**values)


def as_args(cfg: TrainConfig) -> list[str]:
    return [f"--{k}={v}" for k, v in vars(cfg).items() if v is not None]


def read_log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def step_losses(out_dir: Path) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_log(out_dir) if "loss" in r}


def val_losses(out_dir: Path) -> list[float]:
    return [r["val_loss"] for r in read_log(out_dir) if "val_loss" in r]


def one_process_evaluation(cfg: TrainConfig) -> dict[str, float]:
    """What the trainer's evaluation gives the model in cfg.out_dir, computed here in one process: the mean
    loss over the evaluation windows, batch by batch (model(x, shift_labels=y).loss), and bits per byte: every
    target's nats over all their bytes (token_byte_lengths), summed over all the windows at once."""
    model = AutoModelForCausalLM.from_pretrained(cfg.out_dir).eval()
    data = TokenData(cfg.data_dir)
    token_bytes = token_byte_lengths(data.tokenizer(), model.config.vocab_size)
    losses = {}
    with torch.no_grad():
        for split, batches in evaluation_windows(data, cfg.block_size, cfg.batch_size, cfg.eval_iters).items():
            batch_losses, nats, num_bytes = [], 0.0, 0
            for starts in batches:
                x, y = data.windows(split, starts, cfg.block_size)
                out = model(x, shift_labels=y)
                batch_losses.append(out.loss)
                target_nats = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten(), reduction="none")
                target_bytes = token_bytes[y.flatten()]
                nats += target_nats[target_bytes > 0].double().sum().item()
                num_bytes += target_bytes.sum().item()
            losses[split] = torch.stack(batch_losses).mean().item()
            losses[f"{split}_bpb"] = nats / (math.log(2) * num_bytes)
    return losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- conversations (tests/test_chat_train.py, test_distributed.py) ---------------------------------------------


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Made-up conversations: sums asked and answered, some questions after a long passage of Shakespeare, so
    that some training windows hold no assistant token."""
    rng = random.Random(seed)
    passages = (FIXTURES / "shakespeare_char" / "input_head.txt").read_text()
    out = []
    for _ in range(count):
        turns = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            question = f"What is {a} plus {b}?"
            if rng.random() < 0.3:
                start = rng.randrange(len(passages) - 400)
                question = f"Read this:\n{passages[start : start + 400]}\n{question}"
            answer = f"{a} plus {b} is {a + b}."
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append(turns)
    return out


def write_chat_data(out: Path, tokenizer, convs: list[list[dict]], val_conversations: int = 40) -> Path:
    """A chat data folder as `hf-nanogpt prepare CONV OUT --tokenizer MODEL` writes one, made by hand here:
    train.bin / val.bin, beside each a .mask (uint8, 1 where the assistant writes: its replies and their
    <|im_end|>), data_info.json with "chat": true, and OUT/tokenizer with the chat format."""
    out = Path(out)
    out.mkdir(parents=True)
    tokenizer = add_chat_format(tokenizer)
    for split, part in (("train", convs[val_conversations:]), ("val", convs[:val_conversations])):
        ids, mask = [], []
        for conv in part:
            encoded = tokenizer.apply_chat_template(
                conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids += encoded["input_ids"]
            mask += encoded["assistant_masks"]
        np.array(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
        np.array(mask, dtype=np.uint8).tofile(out / f"{split}.mask")
    info = {"vocab_size": len(tokenizer), "dtype": "uint16", "chat": True, "tokenizer_dir": "tokenizer"}
    (out / "data_info.json").write_text(json.dumps(info))
    tokenizer.save_pretrained(out / "tokenizer")
    return out


# -- evaluation on several processes, as threads (tests/test_train.py, test_chat_train.py) ----------------------


class ThreadAccelerator:
    """Process `rank` of as many as `slots` has, as a thread, as far as estimate_loss asks: reduce sums the
    tensors every thread passes at the same point, as accelerator.reduce(..., "sum") does over processes."""

    device = torch.device("cpu")

    def __init__(self, rank: int, slots: list, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.slots, self.barrier = rank, len(slots), slots, barrier

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        self.slots[self.process_index] = tensor.clone()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].clone())
        self.barrier.wait()  # every thread has its sum before the next reduce fills the slots again
        return total


def evaluate_on_processes(world: int, *args) -> list[dict]:
    """estimate_loss(model, accelerator, *args) on `world` processes (threads): each process's figures."""
    slots, barrier, results = [None] * world, threading.Barrier(world, timeout=120), [None] * world

    def process(rank: int) -> None:
        try:
            results[rank] = estimate_loss(args[0], ThreadAccelerator(rank, slots, barrier), *args[1:])
        except BaseException as err:
            barrier.abort()
            results[rank] = err

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
