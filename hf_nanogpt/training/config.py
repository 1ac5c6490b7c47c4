"""The trainer's settings: nanoGPT's train.py names and defaults, read from a preset or a YAML/JSON file,
then the command line, and checked before any work."""

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

PRESETS_DIR = Path(__file__).parents[1] / "presets"

# The choices, declared here for the command line (HfArgumentParser makes a Literal an argparse choice) and for
# check_config (a config file's values bypass argparse); optim.py implements one function per name.
Optimizer = Literal["adamw", "muon"]
LrSchedule = Literal["cosine", "wsd"]


@dataclass
class TrainConfig:
    """nanoGPT's train.py settings (same names and defaults), plus a few of hf_nanogpt's own at the end."""

    # I/O
    out_dir: str = field(default="out", metadata={"help": "where the Hugging Face model and checkpoints go"})
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = field(default=False, metadata={"help": "exit right after the first evaluation"})
    always_save_checkpoint: bool = field(
        default=True, metadata={"help": "save at every eval, not only when val improves"}
    )
    init_from: str = field(
        default="scratch",
        metadata={
            "help": "scratch | resume | gpt2, gpt2-medium, ... (Hub) | a model folder | a nanoGPT out_dir or ckpt.pt"
        },
    )
    # data
    dataset: str = "openwebtext"
    data_dir: str | None = field(default=None, metadata={"help": "prepared data folder (default: data/<dataset>)"})
    gradient_accumulation_steps: int = field(
        default=5 * 8, metadata={"help": "micro-steps per iteration, over all processes"}
    )
    batch_size: int = field(default=12, metadata={"help": "windows per micro-step, per process"})
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = field(default=1.0, metadata={"help": "clip gradients at this norm (0: off)"})
    # learning rate decay
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda (Accelerate places each process)"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (CUDA: bf16, else fp16; CPU: bf16 with AVX512-BF16/AMX, else float32) "
            "| float32 | bfloat16 | float16"
        },
    )
    compile: bool = True
    seed: int = 1337
    # logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    log_with: str = field(
        default="auto",
        metadata={
            "help": "trackers: auto (tensorboard if installed) | none | comma list of tensorboard, wandb, trackio"
        },
    )
    # hf_nanogpt
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "eager | sdpa | flex_attention | flash_attention_2 ..."}
    )
    peak_flops: float = field(
        default=0.0, metadata={"help": "per-device peak FLOP/s for MFU (0: a default for the device)"}
    )
    keep_checkpoints: int = field(default=1, metadata={"help": "how many checkpoints to keep in out_dir/checkpoints"})
    push_to_hub: str | None = field(default=None, metadata={"help": "repo id to push the final model to"})
    push_checkpoints: bool = field(default=False, metadata={"help": "also push the model at every checkpoint"})
    hub_private: bool = False
    # hf_nanogpt: the optimizer and schedule of modded-nanogpt's speedrun (same architecture: wte + wpe GPT)
    optimizer: Optimizer = field(
        default="adamw",
        metadata={
            "help": "adamw (nanoGPT's) | muon: torch.optim.Muon for the blocks' 2-D matrices (c_attn, c_proj, c_fc), "
            "AdamW (learning_rate, betas, weight_decay) for wte = lm_head, wpe, LayerNorms and biases"
        },
    )
    muon_learning_rate: float = field(
        default=0.02,
        metadata={
            "help": "Muon's peak lr, following lr_schedule (scaled by muon_learning_rate/learning_rate); "
            "0.02 is the best "
            "of BENCHMARKS.md's sweep on shakespeare_char_cpu (the speedrun's 0.05 suits its far larger batches)"
        },
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's momentum (Nesterov) after its warm-up"})
    muon_momentum_warmup: float = field(
        default=0.85, metadata={"help": "Muon's momentum at iteration 0, rising linearly to muon_momentum"}
    )
    muon_momentum_warmup_iters: int = field(
        default=300, metadata={"help": "iterations of Muon's momentum warm-up (0: none)"}
    )
    muon_weight_decay: float = field(
        default=0.0, metadata={"help": "Muon's decoupled weight decay (lr x wd x weight)"}
    )
    lr_schedule: LrSchedule = field(
        default="cosine",
        metadata={
            "help": "cosine (nanoGPT's get_lr) | wsd: the same warmup, then constant, then linear down to min_lr "
            "over the last cooldown_frac of lr_decay_iters (the speedrun's)"
        },
    )
    cooldown_frac: float = field(
        default=0.4, metadata={"help": "lr_schedule=wsd: the fraction of lr_decay_iters spent cooling down"}
    )


def load_config_file(source: str) -> dict:
    """A preset name or a YAML/JSON file -> dict of TrainConfig fields."""
    path = Path(source)
    if not path.is_file():
        preset = PRESETS_DIR / f"{source}.yaml"
        if not preset.is_file():
            names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"CONFIG {source!r} is neither a file nor a preset; presets: {names}.")
        path = preset
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; see `hf-nanogpt train --help`.")
    return values


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """[CONFIG] [--name value ...]: defaults, then the config file, then the command line."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        TrainConfig,
        prog="hf-nanogpt train",
        description=(
            "nanoGPT's train.py on Hugging Face Accelerate: one CPU to many GPUs and nodes, Hugging Face models out."
        ),
    )
    parser.add_argument("config", nargs="?", default=None, help="a preset name or a YAML/JSON file")
    if argv and not argv[0].startswith("-"):
        parser.set_defaults(**load_config_file(argv[0]))
    (cfg, _) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def micro_steps_per_process(cfg: TrainConfig, world: int) -> int:
    """gradient_accumulation_steps is the total over all processes, as in nanoGPT: each does its share."""
    if cfg.gradient_accumulation_steps % world:
        steps = world * math.ceil(cfg.gradient_accumulation_steps / world)
        keep = cfg.batch_size * cfg.gradient_accumulation_steps
        hint = f" and --batch_size={keep // steps} to keep {keep} sequences per iteration" if keep % steps == 0 else ""
        raise ValueError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) is the total over all processes, as in "
            f"nanoGPT, and must be divisible by their number ({world}): "
            f"pass --gradient_accumulation_steps={steps}{hint}."
        )
    return cfg.gradient_accumulation_steps // world


def check_config(cfg: TrainConfig) -> None:
    """Values no run can use, named with what was found."""
    positive = (
        "eval_interval",
        "log_interval",
        "eval_iters",
        "gradient_accumulation_steps",
        "batch_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
        "keep_checkpoints",
    )
    bad = [f"{name}={getattr(cfg, name)}" for name in positive if getattr(cfg, name) < 1]
    bad += [
        f"{name}={getattr(cfg, name)}"
        for name in ("max_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters")
        if getattr(cfg, name) < 0
    ]
    if not 0 <= cfg.dropout < 1:
        bad.append(f"dropout={cfg.dropout} (must be in [0, 1))")
    for name, choices in (("optimizer", get_args(Optimizer)), ("lr_schedule", get_args(LrSchedule))):
        if getattr(cfg, name) not in choices:
            bad.append(f"{name}={getattr(cfg, name)!r} ({' or '.join(choices)})")
    if not 0 <= cfg.cooldown_frac <= 1:
        bad.append(f"cooldown_frac={cfg.cooldown_frac} (must be in [0, 1])")
    if cfg.optimizer == "muon":
        if cfg.learning_rate <= 0:
            bad.append(
                f"learning_rate={cfg.learning_rate} "
                f"(optimizer=muon scales Muon's lr by muon_learning_rate/learning_rate: must be > 0)"
            )
        bad += [
            f"{name}={getattr(cfg, name)}"
            for name in ("muon_learning_rate", "muon_weight_decay", "muon_momentum_warmup_iters")
            if getattr(cfg, name) < 0
        ]
        bad += [
            f"{name}={getattr(cfg, name)} (must be in [0, 1))"
            for name in ("muon_momentum", "muon_momentum_warmup")
            if not 0 <= getattr(cfg, name) < 1
        ]
    if bad:
        raise ValueError(f"invalid training settings: {', '.join(bad)}.")
