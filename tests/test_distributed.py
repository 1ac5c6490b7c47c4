"""Distributed training that has run, on CPU processes with gloo: FSDP2 (sharded checkpoints, SIGKILL and
resume, the same losses as DDP), two "machines" forming one world, and resuming on a different number of
processes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import (
    FIXTURES,
    as_args,
    conversations,
    free_port,
    one_process_evaluation,
    read_log,
    step_losses,
    tiny,
    trained_bpe,
    val_losses,
    write_chat_data,
)
from hf_nanogpt.train import train
from hf_nanogpt.training.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
CONFIGS = REPO / "configs" / "accelerate"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
# one iteration is 8 windows: 1 process x batch 8, or 2 processes x batch 4 (gradient_accumulation_steps is the total)
ONE = dict(batch_size=8, gradient_accumulation_steps=1)
TWO = dict(batch_size=4, gradient_accumulation_steps=2)
RUN = dict(
    max_iters=20, lr_decay_iters=20, eval_interval=10, always_save_checkpoint=True, keep_checkpoints=2, eval_iters=3
)  # 3 evaluation batches for 2 processes: one scores a batch twice and does not count it


def launch_command(config: str, cfg, *flags: str) -> list[str]:
    return [
        ACCELERATE,
        "launch",
        "--config_file",
        str(CONFIGS / config),
        "--main_process_port",
        str(free_port()),
        *flags,
        "-m",
        "hf_nanogpt.train",
        *as_args(cfg),
    ]


def launch(config: str, cfg, *flags: str) -> str:
    """`accelerate launch` of the trainer with a shipped config; returns its output."""
    result = subprocess.run(launch_command(config, cfg, *flags), capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(out_dir) / "model.safetensors")


def assert_losses_close(a: dict[int, float], b: dict[int, float], rel: float = 1e-4) -> None:
    assert sorted(a) == sorted(b)
    for it in a:
        assert b[it] == pytest.approx(a[it], rel=rel), it


def resume_from(source: Path, iteration: int, out_dir: Path) -> None:
    """out_dir with only source's checkpoint at `iteration` (a run stopped there), ready for init_from=resume."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(source / "checkpoints" / name, out_dir / "checkpoints" / name)


@pytest.fixture(scope="module")
def runs(char_data, tmp_path_factory) -> dict[str, Path]:
    """The same 20 iterations (dropout off), checkpoints at 10 and 20: one process, DDP on two, FSDP on two."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in ("one", "ddp", "fsdp")}
    train(tiny(char_data, out["one"], **ONE, **RUN))
    (root / "ddp_stdout.txt").write_text(launch("cpu_2proc.yaml", tiny(char_data, out["ddp"], **TWO, **RUN)))
    (root / "fsdp_stdout.txt").write_text(launch("fsdp_cpu_2proc.yaml", tiny(char_data, out["fsdp"], **TWO, **RUN)))
    return out


def test_ddp_on_two_processes_follows_one_process_with_twice_the_batch(runs, char_data):
    """cpu_2proc.yaml: two gloo processes (MULTI_GPU on a machine without GPUs starts torchrun's processes,
    which Accelerate runs on the CPU); per-process batch b on 2 processes == batch 2b on one."""
    stdout = (runs["ddp"].parent / "ddp_stdout.txt").read_text()
    assert stdout.count("tokens per iteration will be: 256 (2 process(es)") == 1  # only the main process logs
    assert "(MULTI_CPU)" in stdout
    a, b = step_losses(runs["one"]), step_losses(runs["ddp"])
    assert sorted(a) == sorted(b) == list(range(21))  # one line per step: written once
    assert_losses_close(a, b)
    # evaluation scores the same windows whatever the number of processes: two processes' last val loss is what
    # one process computes for the model they saved
    cfg = tiny(char_data, runs["ddp"], **TWO, **RUN)
    reference = one_process_evaluation(cfg)
    assert val_losses(runs["ddp"])[-1] == pytest.approx(reference["val"], rel=1e-6)
    last_eval = [r for r in read_log(runs["ddp"]) if "val_bpb" in r][-1]
    assert last_eval["val_bpb"] == pytest.approx(reference["val_bpb"], rel=1e-6)  # bits per byte likewise
    checkpoints = runs["ddp"] / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("iter_*")) == ["iter_0000010", "iter_0000020"]
    assert not list(checkpoints.glob(".*tmp"))
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "optimizer.bin"} <= set(
        os.listdir(checkpoints / "iter_0000020")
    )
    model = AutoModelForCausalLM.from_pretrained(runs["ddp"])
    assert model.lm_head.weight is model.transformer.wte.weight


def test_ddp_and_fsdp_on_conversations_follow_one_process_with_twice_the_batch(tmp_path):
    """Chat data counts the assistant's targets only, a different number in each micro-batch of each process (some
    none): every process counts the whole iteration's from the windows all share, so 2 processes x 2 micro-steps
    x batch 2 still follow 1 process x 2 x batch 4, under DDP and under FSDP."""
    text = (FIXTURES / "shakespeare_char" / "input_head.txt").read_text().splitlines()
    data = write_chat_data(tmp_path / "chat", trained_bpe(text, 300), conversations(300))
    common = dict(max_iters=6, lr_decay_iters=6, eval_interval=6, eval_iters=3)
    one = tiny(data, tmp_path / "one", batch_size=4, gradient_accumulation_steps=2, **common)
    two = tiny(data, tmp_path / "two", batch_size=2, gradient_accumulation_steps=4, **common)
    fsdp = tiny(data, tmp_path / "fsdp", batch_size=2, gradient_accumulation_steps=4, **common)
    train(one)
    assert "(MULTI_CPU)" in launch("cpu_2proc.yaml", two)
    assert_losses_close(step_losses(tmp_path / "one"), step_losses(tmp_path / "two"))
    assert "(FSDP)" in launch("fsdp_cpu_2proc.yaml", fsdp)  # sharded, the same counting
    assert_losses_close(step_losses(tmp_path / "one"), step_losses(tmp_path / "fsdp"))
    folder = AutoTokenizer.from_pretrained(tmp_path / "fsdp")
    assert folder.chat_template is not None  # FSDP's model folder is a chat model too


def test_fsdp_on_two_cpu_processes_matches_ddp_and_one_process(runs):
    stdout = (runs["fsdp"].parent / "fsdp_stdout.txt").read_text()
    assert stdout.count("tokens per iteration will be: 256 (2 process(es)") == 1  # the main process alone prints
    assert "(FSDP)" in stdout
    fsdp = step_losses(runs["fsdp"])
    assert sorted(fsdp) == list(range(21))
    assert_losses_close(step_losses(runs["ddp"]), fsdp)
    assert_losses_close(step_losses(runs["one"]), fsdp)
    for name in ("ddp", "one"):
        ours, theirs = weights(runs["fsdp"]), weights(runs[name])
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)


def test_fsdp_checkpoints_are_sharded_and_the_model_folder_is_whole(runs):
    ckpt = runs["fsdp"] / "checkpoints" / "iter_0000020"
    files = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}
    # each process wrote its own part of the model and of the optimizer state; no gathered copy
    assert {
        "pytorch_model_fsdp_0/__0_0.distcp",
        "pytorch_model_fsdp_0/__1_0.distcp",
        "optimizer_0/__0_0.distcp",
        "optimizer_0/__1_0.distcp",
        "random_states_0.pkl",
        "random_states_1.pkl",
    } <= files
    assert not any(name.endswith((".safetensors", ".bin")) and name != "data_state.safetensors" for name in files)
    assert not list((runs["fsdp"] / "checkpoints").glob(".*tmp"))
    # the model folder: written once, by the main process, with the gathered weights, as its own class (FSDP2's
    # generated FSDPNanoGPTForCausalLM must not become the remote code)
    folder = runs["fsdp"]
    assert not list(folder.glob("_fsdp*")) and (folder / "modeling_nanogpt.py").is_file()
    config = (folder / "config.json").read_text()
    assert "FSDP" not in config and '"AutoModelForCausalLM": "modeling_nanogpt.NanoGPTForCausalLM"' in config
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "NanoGPTForCausalLM" and model.lm_head.weight is model.transformer.wte.weight
    assert model.num_parameters() == sum(t.numel() for t in weights(folder).values())


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every process it started
    proc.wait(timeout=30)


def test_fsdp_sigkill_then_resume_ends_with_identical_weights(char_data, tmp_path):
    """Dropout on: each process's random state must come back too."""
    kwargs = dict(**TWO, max_iters=60, lr_decay_iters=60, eval_interval=10, always_save_checkpoint=True, dropout=0.1)
    launch("fsdp_cpu_2proc.yaml", tiny(char_data, tmp_path / "full", **kwargs))
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        launch_command("fsdp_cpu_2proc.yaml", tiny(char_data, cut, **kwargs)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while (
        ckpt := latest_checkpoint(cut) if (cut / "checkpoints").exists() else None
    ) is None or ckpt.name < "iter_0000020":
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    kill_group(proc)
    assert max(step_losses(cut)) < 60
    launch("fsdp_cpu_2proc.yaml", tiny(char_data, cut, init_from="resume", **kwargs))
    full, resumed = step_losses(tmp_path / "full"), step_losses(cut)
    assert all(full[it] == resumed[it] for it in full)  # bit for bit
    a, b = weights(tmp_path / "full"), weights(cut)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_on_a_different_number_of_processes(runs, char_data, tmp_path, capsys):
    """From iteration 10: DDP on 2 -> 1 process, 1 -> DDP on 2, FSDP on 2 -> FSDP on 1. The iteration, the
    windows, weights and optimizer state carry over; sums round differently, so losses match within 1e-4."""
    two_to_one = tmp_path / "two_to_one"
    resume_from(runs["ddp"], 10, two_to_one)
    result = train(tiny(char_data, two_to_one, init_from="resume", **ONE, **RUN))
    assert "a checkpoint written by 2" in capsys.readouterr().out
    assert result["iter_num"] == 21 and sorted(step_losses(two_to_one)) == list(range(10, 21))
    assert_losses_close({it: v for it, v in step_losses(runs["ddp"]).items() if it >= 10}, step_losses(two_to_one))

    one_to_two = tmp_path / "one_to_two"
    resume_from(runs["one"], 10, one_to_two)
    stdout = launch("cpu_2proc.yaml", tiny(char_data, one_to_two, init_from="resume", **TWO, **RUN))
    assert "resuming on 2 process(es) a checkpoint written by 1" in stdout
    assert_losses_close({it: v for it, v in step_losses(runs["one"]).items() if it >= 10}, step_losses(one_to_two))

    fsdp_to_one = tmp_path / "fsdp_to_one"  # torch.distributed.checkpoint reshards the saved parts on load
    resume_from(runs["fsdp"], 10, fsdp_to_one)
    with pytest.raises(
        ValueError, match="written by FSDP, sharded, and this run is one process; launch with an FSDP config"
    ):
        train(tiny(char_data, fsdp_to_one, init_from="resume", **ONE, **RUN))  # Accelerate reads it under FSDP only
    stdout = launch(
        "fsdp_cpu_2proc.yaml", tiny(char_data, fsdp_to_one, init_from="resume", **ONE, **RUN), "--num_processes", "1"
    )
    assert "(1 process(es)" in stdout and "(FSDP)" in stdout
    assert_losses_close({it: v for it, v in step_losses(runs["fsdp"]).items() if it >= 10}, step_losses(fsdp_to_one))


def header_commands(config: str) -> list[list[str]]:
    """The `accelerate launch` lines in a config's header comment, as argument lists; docs/training.md shows the
    same lines (its test, tests/test_readme.py, leaves them to this file, which runs them)."""
    commands = [
        line.lstrip("# ").split()
        for line in (CONFIGS / config).read_text().splitlines()
        if line.startswith("#") and "accelerate launch" in line
    ]
    readme = [
        line.split()
        for line in (REPO / "docs" / "training.md").read_text().splitlines()
        if line.startswith("accelerate launch") and config in line
    ]
    assert commands and readme == commands
    return commands


def brief(cfg) -> list[str]:
    return [arg for arg in as_args(cfg) if not arg.startswith(("--gradient_accumulation_steps", "--batch_size"))]


def test_two_machines_form_one_world(char_data, tmp_path, runs):
    """The two commands in multinode_cpu_2x1.yaml's header, run at once (as on two machines sharing out_dir),
    make one world of 2 processes: one banner, one log, one checkpoint, one model, DDP-on-2's losses."""
    commands = header_commands("multinode_cpu_2x1.yaml")
    assert [c[:8] for c in commands] == [
        [
            "accelerate",
            "launch",
            "--config_file",
            "configs/accelerate/multinode_cpu_2x1.yaml",
            "--machine_rank",
            rank,
            "--main_process_ip",
            "127.0.0.1",
        ]
        for rank in "01"
    ]
    port = str(free_port())
    cfg = tiny(char_data, tmp_path / "out", **TWO, **RUN)
    procs = []
    for command in commands:
        command = [ACCELERATE, *command[1:]]
        command[command.index("--main_process_port") + 1] = port
        assert command[command.index("-m") + 1 : command.index("-m") + 3] == [
            "hf_nanogpt.train",
            "shakespeare_char_cpu",
        ]
        procs.append(
            subprocess.Popen(
                [*command, *as_args(cfg)],
                cwd=REPO,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    banners = [out.count("tokens per iteration will be: 256 (2 process(es)") for out in outputs]
    assert banners == [1, 0]  # machine 0's process is the main one, for both
    assert_losses_close(step_losses(runs["ddp"]), step_losses(tmp_path / "out"))
    assert len(read_log(tmp_path / "out")) == 21 + 3  # one line per step and per evaluation: one log
    ckpt = tmp_path / "out" / "checkpoints" / "iter_0000020"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= set(os.listdir(ckpt))
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_the_fsdp_config_runs_the_command_in_its_header(char_data, tmp_path):
    """Briefly, and with torch.compile (nanoGPT's default, gpt2_124m's): compiled FSDP writes its model folder."""
    (command,) = header_commands("fsdp_cpu_2proc.yaml")
    assert command[:4] == ["accelerate", "launch", "--config_file", "configs/accelerate/fsdp_cpu_2proc.yaml"]
    cfg = tiny(char_data, tmp_path / "out", max_iters=2, eval_interval=2, eval_iters=1, n_layer=1, compile=True)
    launched = [ACCELERATE, *command[1:4], "--main_process_port", str(free_port()), *command[4:], *brief(cfg)]
    result = subprocess.run(launched, capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(2 process(es) x 1 micro-steps x 6" in result.stdout and "(FSDP)" in result.stdout
    assert (
        '"AutoModelForCausalLM": "modeling_nanogpt.NanoGPTForCausalLM"'
        in (tmp_path / "out" / "config.json").read_text()
    )


def test_cpu_flag_with_several_processes_is_refused(char_data, tmp_path):
    """accelerate 1.15's `--cpu --num_processes 2` starts one process alone in its world: said, not trained."""
    cfg = tiny(char_data, tmp_path / "out", **TWO, max_iters=2)
    command = [
        ACCELERATE,
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "-m",
        "hf_nanogpt.train",
        *as_args(cfg),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode != 0
    assert "error: accelerate launch was asked for several processes or machines on the CPU" in result.stderr
    assert "configs/accelerate/cpu_2proc.yaml" in result.stderr and not (tmp_path / "out" / "log.jsonl").exists()
