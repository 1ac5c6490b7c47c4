"""The Accelerate trainer: schedule, config, data, checkpoints, resume, faults, and two processes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    get_cosine_with_min_lr_schedule_with_warmup,
    pipeline,
)

from helpers import (
    BIN,
    FIXTURES,
    NANOGPT_FIXTURES,
    as_args,
    evaluate_on_processes,
    free_port,
    one_process_evaluation,
    read_log,
    step_losses,
    tiny,
    tiny_model,
)
from hf_nanogpt.data.tokens import TokenData
from hf_nanogpt.data.writing import prepare
from hf_nanogpt.tokenization import token_byte_lengths
from hf_nanogpt.train import train
from hf_nanogpt.training.checkpoint import STATE_FILE, latest_checkpoint
from hf_nanogpt.training.config import TrainConfig, load_config_file, micro_steps_per_process, parse_args
from hf_nanogpt.training.evaluation import evaluation_windows
from hf_nanogpt.training.optim import get_lr
from hf_nanogpt.training.publish import loss_plot, training_card

pytestmark = pytest.mark.slow


# -- the schedule -------------------------------------------------------------------------------------


def nanogpt_get_lr(it, learning_rate=6e-4, warmup_iters=20, lr_decay_iters=100, min_lr=6e-5):
    """nanoGPT's train.py get_lr, as written there."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_lr_schedule_is_nanogpts_and_where_transformers_differs():
    cfg = TrainConfig(learning_rate=6e-4, warmup_iters=20, lr_decay_iters=100, min_lr=6e-5)
    ours = [get_lr(it, cfg) for it in range(150)]
    assert ours == pytest.approx([nanogpt_get_lr(it) for it in range(150)], rel=1e-12)
    # transformers' cosine-with-min-lr: the same cosine between warmup and lr_decay_iters ...
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=6e-4)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, 20, 100, min_lr=6e-5)
    theirs = []
    for _ in range(150):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert theirs[20:101] == pytest.approx(ours[20:101], rel=1e-9)
    # ... but a warmup that starts at 0, and a curve that rises again after its last step: not nanoGPT's
    assert theirs[0] == 0 and ours[0] == pytest.approx(6e-4 / 21)
    assert theirs[149] > 6e-5 * 1.5 and ours[149] == 6e-5
    assert get_lr(500, TrainConfig(decay_lr=False, learning_rate=3e-5)) == 3e-5


# -- configuration --------------------------------------------------------------------------------------


def test_auto_dtype():
    from hf_nanogpt.training.devices import auto_dtype, cpu_has_native_bf16

    assert auto_dtype(cuda=False) == ("bfloat16" if cpu_has_native_bf16() else "float32")


def test_presets_and_overrides(tmp_path):
    cfg = parse_args(["shakespeare_char_cpu", "--max_iters=50", "--n_layer", "2", "--compile=False"])
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (2, 4, 128, 64, 12)
    assert (cfg.max_iters, cfg.eval_iters, cfg.dropout, cfg.device, cfg.compile) == (50, 20, 0.0, "cpu", False)
    for preset in ("shakespeare_char", "finetune_shakespeare", "gpt2_124m"):
        assert parse_args([preset]).out_dir
    assert parse_args(["finetune_shakespeare"]).init_from == "gpt2-xl"
    (tmp_path / "c.yaml").write_text("n_layer: 3\nlearning_rate: 1.0e-4\n")
    (tmp_path / "c.json").write_text(json.dumps({"n_layer": 5, "bias": True}))
    assert parse_args([str(tmp_path / "c.yaml"), "--n_head=3"]).n_layer == 3
    assert parse_args([str(tmp_path / "c.json")]).bias is True
    (tmp_path / "bad.yaml").write_text("n_layers: 3\n")
    with pytest.raises(ValueError, match=r"unknown settings \['n_layers'\]"):
        parse_args([str(tmp_path / "bad.yaml")])
    with pytest.raises(FileNotFoundError, match="presets"):
        parse_args(["no_such_preset"])


# -- data -----------------------------------------------------------------------------------------------


def test_prepare_char_matches_nanogpt_ids(char_data):
    data = TokenData(char_data)
    head = np.fromfile(FIXTURES / "shakespeare_char" / "train_head.bin", dtype=np.uint16)
    assert data.dtype == np.uint16 and data.vocab_size == 78
    assert np.array_equal(np.asarray(data.splits["train"]), head[:90_000])  # prepare.py: first 90% trains
    assert len(data.splits["val"]) == 10_000


def test_prepare_gpt2_matches_nanogpt_ids(tmp_path):
    prepare(FIXTURES / "shakespeare_char" / "input_head.txt", tmp_path / "bpe", tokenizer="gpt2")
    ours = np.asarray(TokenData(tmp_path / "bpe").splits["train"])
    theirs = np.fromfile(FIXTURES / "shakespeare" / "train_head.bin", dtype=np.uint16)
    n = len(ours) - 2  # our text ends at character 90,000, a token may straddle it
    assert n > 20_000 and np.array_equal(ours[:n], theirs[:n])


def test_prepare_gpt2_folder_and_datasets(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(10):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"Document {i}: hello world. " * 20)
    info = prepare(tmp_path / "docs", tmp_path / "bpe", tokenizer="gpt2")
    data = TokenData(tmp_path / "bpe")
    ids = np.asarray(data.splits["train"]).tolist()
    assert info["train"] + info["val"] == len(ids) + len(data.splits["val"])
    assert ids[:4] == [24941, 657, 25, 23748] and ids.count(50256) == 9  # <|endoftext|> after each document
    assert not (tmp_path / "bpe" / "meta.pkl").exists()
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["first row " * 30, "second row " * 30, "third " * 30]}).save_to_disk(
        str(tmp_path / "ds")
    )
    prepare(tmp_path / "ds", tmp_path / "from_ds", tokenizer="char")
    assert TokenData(tmp_path / "from_ds").vocab_size == len(set("first row second row third "))


def test_prepare_uint32_for_large_vocabularies(tmp_path):
    codepoints = [c for c in range(0x100, 0x100 + 75_000) if not 0xD800 <= c <= 0xDFFF][:70_000]  # no surrogates
    text = "".join(map(chr, codepoints))
    (tmp_path / "wide.txt").write_text(text * 2, encoding="utf-8")
    info = prepare(tmp_path / "wide.txt", tmp_path / "wide", tokenizer="char")
    assert info["dtype"] == "uint32" and info["vocab_size"] == 70_000
    data = TokenData(tmp_path / "wide")
    assert data.dtype == np.uint32 and int(np.asarray(data.splits["train"]).max()) == 69_999


# -- training -------------------------------------------------------------------------------------------


def test_training_run_writes_a_usable_model(char_data, tmp_path):
    cfg = tiny(char_data, tmp_path / "out", always_save_checkpoint=True, log_with="tensorboard", dtype="auto")
    result = train(cfg)
    history = result["history"]
    assert [h["iter"] for h in history] == [0, 10, 20, 30]
    assert history[-1]["val"] < history[0]["val"] - 0.5
    out = tmp_path / "out"
    names = set(os.listdir(out))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
        "loss.png",
        "wpe.png",
        "modeling_nanogpt.py",
        "log.jsonl",
        "checkpoints",
    } <= names
    assert list((out / "logs").rglob("events.out.tfevents*"))  # tensorboard tracker
    card = (out / "README.md").read_text()
    assert "| 30 |" in card and "loss.png" in card and "(wpe.png)" in card and "shakespeare_char" in card
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.n_layer, model.config.block_size, model.config.vocab_size) == (2, 32, 78)
    text = pipeline("text-generation", model=str(out))("ROMEO:", max_new_tokens=10)[0]["generated_text"]
    assert text.startswith("ROMEO:")
    logged = step_losses(out)
    assert sorted(logged) == list(range(31)) and all(math.isfinite(v) for v in logged.values())
    assert latest_checkpoint(out).name == "iter_0000030"


# -- evaluation: the loss per token, and in bits per byte -------------------------------------------------


def test_estimate_loss_is_the_models_loss_with_bits_per_byte_on_any_number_of_processes(char_data):
    data = TokenData(char_data)
    model = tiny_model(seed=3)  # 96 embeddings for the 78 characters
    token_bytes = token_byte_lengths(data.tokenizer(), model.config.vocab_size)
    windows = evaluation_windows(data, 32, batch_size=4, eval_iters=3)  # 2 or 4 processes score some twice
    (one,) = evaluate_on_processes(1, model, data, windows, 32, token_bytes)
    for split, batches in windows.items():
        losses = []
        for starts in batches:
            x, y = data.windows(split, starts, 32)
            with torch.no_grad():
                losses.append(model(x, shift_labels=y).loss)
        assert one[split] == torch.stack(losses).mean().item()  # the loss as it was, bit for bit
        # one byte a character of ASCII text: bits per byte are the loss per token in bits
        assert one[f"{split}_bpb"] == pytest.approx(one[split] / math.log(2), rel=1e-6)
    for world in (2, 4):
        for figures in evaluate_on_processes(world, model, data, windows, 32, token_bytes):
            assert figures == pytest.approx(one, rel=1e-6), world


def test_evaluations_log_bits_per_byte_beside_the_loss(char_data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    cfg = tiny(char_data, out, max_iters=10, always_save_checkpoint=True, log_with="tensorboard")
    train(cfg)
    evals = [r for r in read_log(out) if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 10]
    for r in evals:  # char level on ASCII text: a token is a byte
        assert math.isfinite(r["val_bpb"]) and r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-6)
        assert r["train_bpb"] == pytest.approx(r["train_loss"] / math.log(2), rel=1e-6)
    # the model saved at iter 10, evaluated here with model(x, shift_labels=y) and token_byte_lengths
    reference = one_process_evaluation(cfg)
    assert evals[-1]["val_loss"] == pytest.approx(reference["val"], rel=1e-6)
    assert evals[-1]["val_bpb"] == pytest.approx(reference["val_bpb"], rel=1e-6)
    assert f"step 10: train loss {evals[-1]['train_loss']:.4f}, val loss {evals[-1]['val_loss']:.4f}, " in (
        capsys.readouterr().out
    )
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents*")).parent)).Reload()
    assert {"train/loss", "val/loss", "train/bpb", "val/bpb"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/bpb")] == [0, 10]
    card = (out / "README.md").read_text()
    assert "| iter | train loss | val loss | val bpb |" in card
    assert f"| {evals[-1]['val_loss']:.4f} | {evals[-1]['val_bpb']:.4f} |" in card
    assert f"best validation bits per byte {min(r['val_bpb'] for r in evals):.4f}." in card


def test_a_checkpoint_from_before_bits_per_byte_resumes_with_its_card_and_plot(char_data, tmp_path):
    """Checkpoints written before bits per byte were logged have none in their history."""
    out = tmp_path / "out"
    kwargs = dict(eval_interval=5, always_save_checkpoint=True)
    train(tiny(char_data, out, max_iters=10, **kwargs))
    state_file = latest_checkpoint(out) / STATE_FILE
    state = json.loads(state_file.read_text())
    old = [{k: v for k, v in h.items() if not k.endswith("_bpb")} for h in state["history"]]
    state_file.write_text(json.dumps({**state, "history": old}))
    result = train(tiny(char_data, out, init_from="resume", max_iters=15, **kwargs))
    history = result["history"]
    assert [(h["iter"], "val_bpb" in h) for h in history] == [(0, False), (5, False), (10, True), (15, True)]
    card = (out / "README.md").read_text()
    assert f"| 5 | {history[1]['train']:.4f} | {history[1]['val']:.4f} |  |" in card
    assert f"| 15 | {history[3]['train']:.4f} | {history[3]['val']:.4f} | {history[3]['val_bpb']:.4f} |" in card
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # a history with no bits per byte at all: the card says none, the plot has the loss alone
    cfg, model = tiny(char_data, out), AutoModelForCausalLM.from_pretrained(out)
    card = training_card(cfg, model, old, None, "shakespeare_char", has_plot=True)
    assert "| 0 | " in card and "bits per byte" not in card.split("##")[0]
    assert loss_plot(old)[:4] == b"\x89PNG"


def test_only_improving_checkpoints_and_keep(char_data, tmp_path):
    cfg = tiny(char_data, tmp_path / "out", always_save_checkpoint=False, keep_checkpoints=2, max_iters=30)
    train(cfg)
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("iter_*"))
    assert kept == ["iter_0000020", "iter_0000030"]


def test_gradient_accumulation_scales_the_loss(char_data, tmp_path):
    """G micro-batches of b equal one batch of G*b: same windows, same update (float tolerance)."""
    train(tiny(char_data, tmp_path / "a", batch_size=8, gradient_accumulation_steps=1, max_iters=8))
    train(tiny(char_data, tmp_path / "b", batch_size=4, gradient_accumulation_steps=2, max_iters=8))
    la, lb = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert sorted(la) == sorted(lb) == list(range(9))
    for it in la:  # the generator draws 8 windows at once or 4 twice: the same windows, in the same order
        assert la[it] == pytest.approx(lb[it], rel=1e-4)
    assert la[8] < la[0]  # and it trains


def test_init_from_gpt2_folder_nanogpt_checkpoint_and_block_crop(char_data, tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=96)).save_pretrained(
        tmp_path / "gpt2"
    )
    result = train(tiny(char_data, tmp_path / "g", init_from=str(tmp_path / "gpt2"), max_iters=3, block_size=32))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "g").config.activation_function == "gelu_new"
    assert result["iter_num"] == 4
    train(
        tiny(
            char_data,
            tmp_path / "n",
            init_from=str(NANOGPT_FIXTURES / "A_char_nobias"),
            max_iters=3,
            block_size=32,
            dropout=0.1,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "n")
    assert (model.config.block_size, model.config.n_embd, model.config.dropout) == (32, 64, 0.1)  # cropped from 64
    train(tiny(char_data, tmp_path / "f", init_from=str(tmp_path / "n"), max_iters=2))  # a model folder
    assert (tmp_path / "f" / "model.safetensors").exists()


def test_bad_input_fails_before_any_work(char_data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing \['train.bin', 'val.bin'\].*hf-nanogpt prepare"):
        train(tiny(char_data, tmp_path / "o1", data_dir=str(tmp_path / "nodata")))
    train(tiny(char_data, tmp_path / "small", max_iters=1))
    with pytest.raises(ValueError, match="block_size 64 is larger than the model's 32"):
        train(tiny(char_data, tmp_path / "o2", init_from=str(tmp_path / "small"), block_size=64))
    with pytest.raises(ValueError, match="init_from='nonsense' is neither"):
        train(tiny(char_data, tmp_path / "o3", init_from="nonsense"))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(tiny(char_data, tmp_path / "o4", init_from="resume"))
    with pytest.raises(ValueError, match="batch_size=0"):
        train(tiny(char_data, tmp_path / "o5", batch_size=0))
    assert sorted(os.listdir(tmp_path)) == ["small"]  # nothing was created for the failed runs


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(char_data, tmp_path, monkeypatch):
    from hf_nanogpt import NanoGPTForCausalLM

    forward = NanoGPTForCausalLM.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 15:  # training steps after iteration 15 go bad
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(NanoGPTForCausalLM, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="loss became nan at iter 15"):
        train(tiny(char_data, tmp_path / "out", always_save_checkpoint=True))
    ckpt = latest_checkpoint(tmp_path / "out")
    assert ckpt.name == "iter_0000010"
    weights = AutoModelForCausalLM.from_pretrained(tmp_path / "out").transformer.wte.weight
    assert torch.isfinite(weights).all()


def test_interrupted_save_leaves_the_previous_checkpoint(char_data, tmp_path, monkeypatch):
    from accelerate import Accelerator

    save_state = Accelerator.save_state
    saves = {"n": 0}

    def dies_on_second_save(self, output_dir=None, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            Path(output_dir, "optimizer.bin").write_bytes(b"half")  # a partial write, then the kill
            raise KeyboardInterrupt("killed during save")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(char_data, tmp_path / "out", always_save_checkpoint=True))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "out").name == "iter_0000010"
    result = train(tiny(char_data, tmp_path / "out", init_from="resume"))
    assert result["iter_num"] == 31


def run_trainer(cfg: TrainConfig, extra_env=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "hf_nanogpt.train", *as_args(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_checkpoint(out_dir: Path, proc: subprocess.Popen, at_least: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpt = latest_checkpoint(out_dir) if (out_dir / "checkpoints").exists() else None
        if ckpt is not None and int(ckpt.name.split("_")[1]) >= at_least:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("no checkpoint appeared")


def test_latest_checkpoint_without_a_pointer_is_the_highest_complete_iteration(tmp_path):
    """`cp -r out_dir` gives the copies new mtimes in any order: the iteration number decides, not the time."""
    root = tmp_path / "out" / "checkpoints"
    for iter_num, age in ((9_000, 0), (10_000, 300), (20_000, 200), (30_000, 100)):  # iter_0030000 has no state
        folder = root / f"iter_{iter_num:07d}"
        folder.mkdir(parents=True)
        if iter_num != 30_000:
            (folder / "trainer_state.json").write_text(json.dumps({"iter_num": iter_num}))
        os.utime(folder, (time.time() - age, time.time() - age))  # iter_0009000 is the newest
    assert latest_checkpoint(tmp_path / "out").name == "iter_0020000"
    (root / "latest").write_text("iter_0030000\n")  # a pointer to an incomplete one is passed over
    assert latest_checkpoint(tmp_path / "out").name == "iter_0020000"
    (root / "latest").write_text("iter_0009000\n")  # a complete one it names wins (a newer run in the same out_dir)
    assert latest_checkpoint(tmp_path / "out").name == "iter_0009000"


def test_sigkill_then_resume_is_bit_exact(char_data, tmp_path):
    """A run killed with SIGKILL part way and resumed ends with the same loss as an uninterrupted one.
    Dropout is on, so the restored random state matters too."""
    kwargs = dict(max_iters=60, lr_decay_iters=60, eval_interval=10, always_save_checkpoint=True, dropout=0.1)
    full = tiny(char_data, tmp_path / "full", **kwargs)
    assert run_trainer(full).wait(timeout=300) == 0
    cut = tiny(char_data, tmp_path / "cut", **kwargs)
    proc = run_trainer(cut)
    wait_for_checkpoint(tmp_path / "cut", proc, at_least=20)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(step_losses(tmp_path / "cut"))
    assert killed_at < 60
    resumed = run_trainer(tiny(char_data, tmp_path / "cut", init_from="resume", **kwargs))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "cut")
    assert a[60] == b[60]  # bit-exact
    assert all(a[it] == b[it] for it in a)
    assert [r for r in read_log(tmp_path / "full") if "val_loss" in r][-1]["val_loss"] == [
        r for r in read_log(tmp_path / "cut") if "val_loss" in r
    ][-1]["val_loss"]


def test_sigterm_saves_and_exits_cleanly(char_data, tmp_path):
    cfg = tiny(
        char_data,
        tmp_path / "out",
        max_iters=100000,
        lr_decay_iters=100000,
        eval_interval=1000,
        always_save_checkpoint=True,
    )
    proc = run_trainer(cfg)
    deadline = time.time() + 240
    while not (tmp_path / "out" / "log.jsonl").exists() or len(step_losses(tmp_path / "out")) < 5:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM: saved a checkpoint at iter" in output
    ckpt = latest_checkpoint(tmp_path / "out")
    stopped_at = json.loads((ckpt / "trainer_state.json").read_text())["iter_num"]
    assert stopped_at == max(step_losses(tmp_path / "out")) + 1
    result = train(
        tiny(
            char_data,
            tmp_path / "out",
            init_from="resume",
            max_iters=stopped_at + 3,
            lr_decay_iters=100000,
            eval_interval=1000,
        )
    )
    assert result["iter_num"] == stopped_at + 4


def test_push_to_hub_publishes_the_model_not_the_training_state(char_data, tmp_path, monkeypatch, hub):
    from huggingface_hub import HfApi

    from helpers import WRITE_TOKEN

    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    train(
        tiny(char_data, tmp_path / "out", max_iters=10, push_to_hub="alice/trained-tiny", always_save_checkpoint=True)
    )
    files = set(HfApi(token=WRITE_TOKEN).list_repo_files("alice/trained-tiny"))
    assert {
        "model.safetensors",
        "config.json",
        "modeling_nanogpt.py",
        "tokenizer.json",
        "README.md",
        "loss.png",
        "wpe.png",
    } <= files
    assert not any(f.startswith(("checkpoints/", "logs/")) or f == "log.jsonl" for f in files)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 10 |" in card


def test_out_dir_over_the_data_is_refused(char_data, tmp_path):
    with pytest.raises(ValueError, match="out_dir .* is data_dir"):
        train(tiny(char_data, char_data))
    with pytest.raises(ValueError, match="out_dir .* lies inside data_dir"):
        train(tiny(char_data, char_data / "out"))
    assert not (char_data / "out").exists() and sorted(os.listdir(char_data)) == [
        "data_info.json",
        "meta.pkl",
        "train.bin",
        "val.bin",
    ]


def test_a_run_removes_what_a_killed_run_left_half_written(char_data, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".model.tmp").mkdir(parents=True)
    (out / ".model.tmp" / "model.safetensors").write_bytes(b"half")
    (out / "checkpoints" / ".iter_0000010.tmp").mkdir(parents=True)
    train(tiny(char_data, out, max_iters=2))
    assert not (out / ".model.tmp").exists() and not list((out / "checkpoints").glob(".*.tmp"))
    assert "left half-written by an interrupted run" in capsys.readouterr().out


def test_an_unreadable_random_state_is_said_on_resume(char_data, tmp_path, capsys):
    train(tiny(char_data, tmp_path / "out", max_iters=10, always_save_checkpoint=True))
    (latest_checkpoint(tmp_path / "out") / "random_states_0.pkl").write_bytes(b"not a pickle")
    capsys.readouterr()
    train(tiny(char_data, tmp_path / "out", init_from="resume", max_iters=12))
    err = capsys.readouterr().err
    assert "random_states_0.pkl could not be read" in err and "no longer bit-exact" in err


def test_ctrl_c_saves_a_checkpoint_and_a_second_one_stops_at_once(char_data, tmp_path):
    """Ctrl-C is SIGTERM's twin (a checkpoint, one line, exit 130); a second Ctrl-C aborts, without a traceback."""
    cfg = tiny(char_data, tmp_path / "out", max_iters=100000, lr_decay_iters=100000, eval_interval=1000)
    for presses in (1, 2):
        proc = run_trainer(
            cfg
            if presses == 1
            else tiny(
                char_data,
                tmp_path / "out",
                init_from="resume",
                max_iters=100000,
                lr_decay_iters=100000,
                eval_interval=1000,
            )
        )
        deadline, seen = time.time() + 240, len(step_losses(tmp_path / "out")) if presses == 2 else 0
        while not (tmp_path / "out" / "log.jsonl").exists() or len(step_losses(tmp_path / "out")) < seen + 5:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, output
        assert "Traceback" not in output, output
        if presses == 1:
            assert "SIGINT: saved a checkpoint at iter" in output
            assert latest_checkpoint(tmp_path / "out") is not None
        else:
            assert "stopped by Ctrl-C at once" in output


def test_the_two_process_config_runs_the_command_in_its_header(char_data, tmp_path):
    """configs/accelerate/cpu_2proc.yaml documents a command; it runs (on this data, briefly)."""
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "cpu_2proc.yaml"
    command = next(
        line.lstrip("# ").split() for line in config.read_text().splitlines() if "accelerate launch" in line
    )
    assert command[:4] == ["accelerate", "launch", "--config_file", "configs/accelerate/cpu_2proc.yaml"]
    brief = [
        f"--data_dir={char_data}",
        f"--out_dir={tmp_path / 'out'}",
        "--max_iters=2",
        "--eval_interval=2",
        "--eval_iters=1",
        "--n_layer=1",
        "--n_embd=32",
        "--n_head=2",
        "--block_size=32",
        "--log_with=none",
        "--compile=False",
    ]
    launch = [str(BIN / "accelerate"), *command[1:4], "--main_process_port", str(free_port()), *command[4:], *brief]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        launch, capture_output=True, text=True, timeout=300, env=env, cwd=config.parents[2]
    )  # the repo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(2 process(es)" in result.stdout
    # without the header's flags the preset stops at once, saying which flags to pass
    with pytest.raises(ValueError, match="--gradient_accumulation_steps=2 and --batch_size=6 to keep 12 sequences"):
        micro_steps_per_process(TrainConfig(**load_config_file("shakespeare_char_cpu")), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_cuda_without_cuda_is_an_error_line(char_data, tmp_path, capsys):
    from hf_nanogpt.train import main

    assert main(as_args(tiny(char_data, tmp_path / "out", device="cuda"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device=cuda, but no CUDA device is available") and "Traceback" not in err
    assert not (tmp_path / "out").exists()
