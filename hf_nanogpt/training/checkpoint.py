"""Resumable state in out_dir/checkpoints: written whole or not at all, found again, read back; and the
signals that ask for one before stopping."""

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from .config import TrainConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
DATA_STATE_FILE = "data_state.safetensors"
MODEL_CONFIG_DIR = "model_config"
MODEL_TMP = ".model.tmp"  # out_dir's model folder while publish.write_model writes it


class _ExpectedTiedWeightsNote(logging.Filter):
    """accelerate warns that it drops lm_head.weight when saving state: expected, it is tied to wte."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'}" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_ExpectedTiedWeightsNote())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest complete iter_* folder."""
    root = out_dir / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    # by number, not by time: copying out_dir (cp -r) gives every folder a new mtime, in any order
    complete = [p for p in root.glob("iter_*") if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return max(complete, key=lambda p: int(p.name[5:]), default=None)


def remove_stale_temporaries(out_dir: Path) -> None:
    """What a run killed while writing leaves: the half-written model folder and checkpoint."""
    for tmp in [*out_dir.glob(MODEL_TMP), *(out_dir / CHECKPOINTS).glob(".*.tmp")]:
        print(f"removing {tmp}, left half-written by an interrupted run")
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def check_same_optimizer(resume_dir: Path, cfg: TrainConfig) -> None:
    """A checkpoint's optimizer state belongs to the optimizer that wrote it: resuming needs the same one."""
    saved = json.loads((resume_dir / STATE_FILE).read_text()).get("config", {}).get("optimizer", "adamw")
    if saved != cfg.optimizer:
        raise ValueError(
            f"init_from=resume: {resume_dir} was trained with optimizer={saved}, this run asks for "
            f"optimizer={cfg.optimizer}; pass --optimizer={saved}."
        )


def check_random_state(resume_dir: Path, rank: int) -> None:
    """Accelerate resumes without a random state it cannot read, saying so only at info level: say it."""
    from accelerate.utils import load

    path = resume_dir / f"random_states_{rank}.pkl"
    try:
        load(path)  # as accelerate's load_state reads it
    except Exception as err:
        print(
            f"warning: {path} could not be read ({type(err).__name__}: {err}); resuming without its random "
            f"state, so this run is no longer bit-exact with an uninterrupted one.",
            file=sys.stderr,
            flush=True,
        )


def save_checkpoint(accelerator, model, cfg, state: dict, data_state: dict) -> Path:
    """Resumable state: accelerate's (model, optimizer, RNG) plus ours, in checkpoints/iter_N, written
    as checkpoints/.iter_N.tmp and renamed; `latest` is then replaced atomically and old ones removed."""
    from safetensors.torch import save_file

    root = Path(cfg.out_dir) / CHECKPOINTS
    name = f"iter_{state['iter_num']:07d}"
    tmp = root / f".{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process writes its own random state into tmp before the rename
    if accelerator.is_main_process:
        save_file(data_state, tmp / DATA_STATE_FILE)
        accelerator.unwrap_model(model).config.save_pretrained(tmp / MODEL_CONFIG_DIR)
        state = {**state, "num_processes": accelerator.num_processes, "config": dataclasses.asdict(cfg)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = root / f".{LATEST}.tmp"
        pointer_tmp.write_text(name + "\n")
        os.replace(pointer_tmp, root / LATEST)
        # oldest first by time, not by name: an earlier run in the same out_dir may have gone further
        others = sorted((p for p in root.glob("iter_*") if p.name != name), key=lambda p: p.stat().st_mtime)
        for old in others[: max(0, len(others) - (cfg.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return root / name


WORLD_KINDS = {"NO": "one process", "MULTI_CPU": "DDP on CPU processes", "MULTI_GPU": "DDP on GPUs", "FSDP": "FSDP"}


def check_sharding(resume_dir: Path, accelerator) -> None:
    """A sharded (FSDP) checkpoint resumes under FSDP, a whole one (one process, DDP) without it: Accelerate
    reads each only the way it was written. Said before any work, with the way to resume."""
    sharded = (resume_dir / "pytorch_model_fsdp_0").is_dir()
    kind = accelerator.distributed_type.value
    fsdp = kind == "FSDP"
    if sharded != fsdp:
        how = (
            (
                "launch with an FSDP config (configs/accelerate/fsdp_cpu_2proc.yaml, fsdp_8gpu.yaml; "
                "--num_processes sets any size, 1 too)"
            )
            if sharded
            else "launch without FSDP (one process, or a DDP config)"
        )
        raise ValueError(
            f"init_from=resume: {resume_dir} was written {'by FSDP, sharded' if sharded else 'without FSDP'}, "
            f"and this run is {WORLD_KINDS.get(kind, kind)}; {how}."
        )


def load_checkpoint(accelerator, resume_dir: Path, train_gen) -> dict:
    """Back to where resume_dir was written: Accelerate's state (model, optimizers and each process's random
    state; under FSDP each process reads its part of the sharded checkpoint, whatever number of processes
    wrote it), the training windows' generator, and the trainer's own state, which is returned."""
    from safetensors.torch import load_file

    accelerator.load_state(str(resume_dir))
    saved = json.loads((resume_dir / STATE_FILE).read_text())
    written_by = saved.get("num_processes", 1)
    if written_by != accelerator.num_processes:
        if accelerator.is_main_process:
            print(
                f"resuming on {accelerator.num_processes} process(es) a checkpoint written by {written_by}: the "
                f"weights, optimizer state, iteration and training windows carry over; dropout's random state is "
                f"per process and does not, and sums over processes round differently, so losses match a run "
                f"that kept its size to float precision, not bit for bit.",
                flush=True,
            )
    else:
        check_random_state(resume_dir, accelerator.process_index)
    # (an older checkpoint's eval_gen is not needed)
    train_gen.set_state(load_file(resume_dir / DATA_STATE_FILE)["train_gen"])
    return saved


class Preemption:
    """SIGTERM (a cluster taking the machine back) and Ctrl-C (SIGINT) ask for a checkpoint and a clean
    exit at the end of the iteration; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signal: str | None = None  # the name of the first signal that came
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == "SIGINT":
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if signum == signal.SIGINT:
            print(
                "\nCtrl-C: saving a checkpoint, then stopping (Ctrl-C again stops at once, without it)",
                file=sys.stderr,
                flush=True,
            )

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
