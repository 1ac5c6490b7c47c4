"""nanoGPT's train.py on Hugging Face Accelerate: one CPU to many GPUs and nodes, Hugging Face models out.

    hf-nanogpt train shakespeare_char_cpu --max_iters=500          # one process
    accelerate launch -m hf_nanogpt.train gpt2_124m                  # several (DDP, FSDP, DeepSpeed, nodes)

CONFIG is a preset name (hf_nanogpt/presets/*.yaml) or a YAML/JSON file; `--name value` (or
`--name=value`) overrides it. Option names and defaults are nanoGPT's.

The loop is nanoGPT's, a straight line: random block windows, gradient accumulation with the loss
scaled, AdamW (weight decay on 2-D tensors only), cosine learning rate with warmup, gradient clipping,
train/val loss every eval_interval, a checkpoint when val improves (or always). `--optimizer=muon` and
`--lr_schedule=wsd` swap in the optimizer and schedule of modded-nanogpt's speedrun, same model. Accelerate supplies
the devices, processes, mixed precision, checkpoint state and trackers.

Differences from nanoGPT, each on purpose:
- `gradient_accumulation_steps` is, as in nanoGPT, the total over all processes (divided by their
  number); the windows of each micro-step are drawn once for all processes and shared out, so N
  processes with batch b see exactly the windows one process with batch N*b would.
- Training windows come from a seeded generator saved in the checkpoint, so a resumed run continues bit
  for bit (on one CPU process). Every evaluation scores the same windows (`evaluation_windows`: drawn once
  from a fixed seed, shared out among the processes), so val losses compare across runs, evaluations and
  numbers of processes; nanoGPT draws new ones each time, from each process's own generator.
- out_dir holds a Hugging Face model folder (the best model by val loss, or the latest with
  always_save_checkpoint) and checkpoints/, the resumable state, written to a temporary folder and
  renamed, so a kill mid-save leaves the previous checkpoint whole.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

PRESETS_DIR = Path(__file__).parent / "presets"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
DATA_STATE_FILE = "data_state.safetensors"
MODEL_CONFIG_DIR = "model_config"
LOG_FILE = "log.jsonl"
EVAL_SEED = 1338  # of the evaluation windows; it was the default seed + 1, so one process's first evaluation is as before


class _ExpectedTiedWeightsNote(logging.Filter):
    """accelerate warns that it drops lm_head.weight when saving state: expected, it is tied to wte."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'}" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_ExpectedTiedWeightsNote())


@dataclass
class TrainConfig:
    """nanoGPT's train.py settings (same names and defaults), plus a few of hf_nanogpt's own at the end."""

    # I/O
    out_dir: str = field(default="out", metadata={"help": "where the Hugging Face model and checkpoints go"})
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = field(default=False, metadata={"help": "exit right after the first evaluation"})
    always_save_checkpoint: bool = field(default=True, metadata={"help": "save at every eval, not only when val improves"})
    init_from: str = field(
        default="scratch",
        metadata={"help": "scratch | resume | gpt2, gpt2-medium, ... (Hub) | a model folder | a nanoGPT out_dir or ckpt.pt"},
    )
    # data
    dataset: str = "openwebtext"
    data_dir: str | None = field(default=None, metadata={"help": "prepared data folder (default: data/<dataset>)"})
    gradient_accumulation_steps: int = field(default=5 * 8, metadata={"help": "micro-steps per iteration, over all processes"})
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
    dtype: str = field(default="auto", metadata={"help": "auto (CUDA: bf16, else fp16; CPU: bf16 with AVX512-BF16/AMX, else float32) | float32 | bfloat16 | float16"})
    compile: bool = True
    seed: int = 1337
    # logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    log_with: str = field(default="auto", metadata={"help": "trackers: auto (tensorboard if installed) | none | comma list of tensorboard, wandb, trackio"})
    # hf_nanogpt
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager | sdpa | flex_attention | flash_attention_2 ..."})
    peak_flops: float = field(default=0.0, metadata={"help": "per-device peak FLOP/s for MFU (0: a default for the device)"})
    keep_checkpoints: int = field(default=1, metadata={"help": "how many checkpoints to keep in out_dir/checkpoints"})
    push_to_hub: str | None = field(default=None, metadata={"help": "repo id to push the final model to"})
    push_checkpoints: bool = field(default=False, metadata={"help": "also push the model at every checkpoint"})
    hub_private: bool = False
    # hf_nanogpt: the optimizer and schedule of modded-nanogpt's speedrun (same architecture: wte + wpe GPT)
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw (nanoGPT's) | muon: torch.optim.Muon for the blocks' 2-D matrices (c_attn, c_proj, c_fc), "
                          "AdamW (learning_rate, betas, weight_decay) for wte = lm_head, wpe, LayerNorms and biases"},
    )
    muon_learning_rate: float = field(
        default=0.02,
        metadata={"help": "Muon's peak lr, following lr_schedule (scaled by muon_learning_rate/learning_rate); 0.02 is the best "
                          "of BENCHMARKS.md's sweep on shakespeare_char_cpu (the speedrun's 0.05 suits its far larger batches)"},
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's momentum (Nesterov) after its warm-up"})
    muon_momentum_warmup: float = field(default=0.85, metadata={"help": "Muon's momentum at iteration 0, rising linearly to muon_momentum"})
    muon_momentum_warmup_iters: int = field(default=300, metadata={"help": "iterations of Muon's momentum warm-up (0: none)"})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "Muon's decoupled weight decay (lr x wd x weight)"})
    lr_schedule: str = field(
        default="cosine",
        metadata={"help": "cosine (nanoGPT's get_lr) | wsd: the same warmup, then constant, then linear down to min_lr "
                          "over the last cooldown_frac of lr_decay_iters (the speedrun's)"},
    )
    cooldown_frac: float = field(default=0.4, metadata={"help": "lr_schedule=wsd: the fraction of lr_decay_iters spent cooling down"})


# ---------------------------------------------------------------------------------------------------
# configuration


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
    parser = HfArgumentParser(TrainConfig, prog="hf-nanogpt train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=None, help="a preset name or a YAML/JSON file")
    if argv and not argv[0].startswith("-"):
        parser.set_defaults(**load_config_file(argv[0]))
    (cfg, _) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def get_lr(it: int, cfg: TrainConfig) -> float:
    """nanoGPT's schedule: linear warmup from lr/(warmup+1), cosine decay to min_lr at lr_decay_iters,
    then min_lr. (transformers' get_cosine_with_min_lr_schedule_with_warmup starts warmup at 0 and
    rises again after its last step, so it is not used; tests/test_train.py shows both.)"""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters or cfg.lr_decay_iters <= cfg.warmup_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def get_wsd_lr(it: int, cfg: TrainConfig) -> float:
    """Warmup, stable, decay (modded-nanogpt's speedrun): nanoGPT's linear warmup, then learning_rate until
    the last cooldown_frac of lr_decay_iters, then a straight line down to min_lr at lr_decay_iters, then
    min_lr. Training at the peak for longer and cooling down at the end reaches a given loss sooner."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    cooldown_start = max(cfg.warmup_iters, cfg.lr_decay_iters - round(cfg.cooldown_frac * cfg.lr_decay_iters))
    if it < cooldown_start:
        return cfg.learning_rate
    remaining = (cfg.lr_decay_iters - it) / (cfg.lr_decay_iters - cooldown_start)
    return cfg.min_lr + remaining * (cfg.learning_rate - cfg.min_lr)


LR_SCHEDULES = {"cosine": get_lr, "wsd": get_wsd_lr}


def muon_momentum(it: int, cfg: TrainConfig) -> float:
    """The speedrun's momentum warm-up: muon_momentum_warmup at iteration 0, linearly up to muon_momentum
    at muon_momentum_warmup_iters, then muon_momentum."""
    if it >= cfg.muon_momentum_warmup_iters:
        return cfg.muon_momentum
    frac = it / cfg.muon_momentum_warmup_iters
    return cfg.muon_momentum_warmup + frac * (cfg.muon_momentum - cfg.muon_momentum_warmup)


def set_hyperparameters(optimizers: list, it: int, cfg: TrainConfig) -> float:
    """This iteration's learning rates (and Muon's momentum), on every group; returns AdamW's lr (the one
    logged). One schedule for all: Muon's lr is AdamW's scaled by muon_learning_rate / learning_rate."""
    lr = LR_SCHEDULES[cfg.lr_schedule](it, cfg)
    for optimizer in optimizers:
        muon = isinstance(getattr(optimizer, "optimizer", optimizer), torch.optim.Muon)  # under Accelerate's wrapper
        for group in optimizer.param_groups:
            if muon:
                group["lr"] = lr * cfg.muon_learning_rate / cfg.learning_rate
                group["momentum"] = muon_momentum(it, cfg)
            else:
                group["lr"] = lr
    return lr


def micro_steps_per_process(cfg: TrainConfig, world: int) -> int:
    """gradient_accumulation_steps is the total over all processes, as in nanoGPT: each does its share."""
    if cfg.gradient_accumulation_steps % world:
        steps = world * math.ceil(cfg.gradient_accumulation_steps / world)
        keep = cfg.batch_size * cfg.gradient_accumulation_steps
        hint = f" and --batch_size={keep // steps} to keep {keep} sequences per iteration" if keep % steps == 0 else ""
        raise ValueError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) is the total over all processes, as in "
            f"nanoGPT, and must be divisible by their number ({world}): pass --gradient_accumulation_steps={steps}{hint}."
        )
    return cfg.gradient_accumulation_steps // world


def check_config(cfg: TrainConfig) -> None:
    """Values no run can use, named with what was found."""
    positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size", "block_size",
                "n_layer", "n_head", "n_embd", "keep_checkpoints")
    bad = [f"{name}={getattr(cfg, name)}" for name in positive if getattr(cfg, name) < 1]
    bad += [f"{name}={getattr(cfg, name)}" for name in ("max_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters") if getattr(cfg, name) < 0]
    if not 0 <= cfg.dropout < 1:
        bad.append(f"dropout={cfg.dropout} (must be in [0, 1))")
    if cfg.optimizer not in ("adamw", "muon"):
        bad.append(f"optimizer={cfg.optimizer!r} (adamw or muon)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        bad.append(f"lr_schedule={cfg.lr_schedule!r} ({' or '.join(LR_SCHEDULES)})")
    if not 0 <= cfg.cooldown_frac <= 1:
        bad.append(f"cooldown_frac={cfg.cooldown_frac} (must be in [0, 1])")
    if cfg.optimizer == "muon":
        if cfg.learning_rate <= 0:
            bad.append(f"learning_rate={cfg.learning_rate} (optimizer=muon scales Muon's lr by muon_learning_rate/learning_rate: must be > 0)")
        bad += [f"{name}={getattr(cfg, name)}" for name in ("muon_learning_rate", "muon_weight_decay", "muon_momentum_warmup_iters")
                if getattr(cfg, name) < 0]
        bad += [f"{name}={getattr(cfg, name)} (must be in [0, 1))" for name in ("muon_momentum", "muon_momentum_warmup")
                if not 0 <= getattr(cfg, name) < 1]
    if bad:
        raise ValueError(f"invalid training settings: {', '.join(bad)}.")


# ---------------------------------------------------------------------------------------------------
# model


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest complete iter_* folder."""
    root = out_dir / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    complete = sorted((p for p in root.glob("iter_*") if (p / STATE_FILE).is_file()), key=lambda p: p.stat().st_mtime)
    return complete[-1] if complete else None


def build_model(cfg: TrainConfig, vocab_size: int | None):
    """The model init_from asks for, a base-model name for the card, and the checkpoint to resume from.
    Raises before any work when init_from is not usable. (The tokenizer is always the data's: it is
    what the ids on disk mean.)"""
    from transformers import AutoModelForCausalLM

    from . import NanoGPTConfig, NanoGPTForCausalLM

    init = cfg.init_from
    if init == "scratch":
        torch.manual_seed(cfg.seed)
        config = NanoGPTConfig(
            vocab_size=vocab_size or 50304,  # GPT-2's 50257 padded up to a multiple of 64
            block_size=cfg.block_size,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            dropout=cfg.dropout,
            bias=cfg.bias,
        )
        return NanoGPTForCausalLM(config), None, None
    if init == "resume":
        ckpt = latest_checkpoint(Path(cfg.out_dir))
        if ckpt is None:
            raise FileNotFoundError(f"init_from=resume: no complete checkpoint in {Path(cfg.out_dir) / CHECKPOINTS}.")
        config = NanoGPTConfig.from_pretrained(ckpt / MODEL_CONFIG_DIR)
        config.dropout = cfg.dropout
        with torch.device("meta"):
            model = NanoGPTForCausalLM(config)
        model = model.to_empty(device="cpu")  # filled by accelerator.load_state
        model.tie_weights()
        return model, None, ckpt
    path = Path(init)
    if init.startswith("gpt2") and not path.exists() or (path / "config.json").is_file() and _model_type(path) == "gpt2":
        from .conversion.gpt2 import gpt2_as_nanogpt

        model, _ = gpt2_as_nanogpt(init)
        return _set_dropout(model, cfg.dropout), init, None
    if (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if model.config.model_type != "nanogpt":
            raise ValueError(f"init_from={init}: model_type {model.config.model_type!r}; expected nanogpt or gpt2.")
        return _set_dropout(model, cfg.dropout), str(init), None
    if path.is_file() and path.suffix == ".pt" or (path / "ckpt.pt").is_file():
        from .conversion.nanogpt import model_from_state_dict, read_nanogpt

        ckpt_path, _, config, state_dict = read_nanogpt(path)
        model = model_from_state_dict({k: v.clone() for k, v in state_dict.items()}, config)
        return _set_dropout(model, cfg.dropout), str(ckpt_path), None
    raise ValueError(
        f"init_from={init!r} is neither 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), "
        f"a model folder (with config.json) nor a nanoGPT out_dir or ckpt.pt."
    )


def _model_type(folder: Path) -> str | None:
    return json.loads((folder / "config.json").read_text()).get("model_type")


def _set_dropout(model, dropout: float):
    """nanoGPT's override_args: the dropout of this run, not of the checkpoint."""
    model.config.dropout = dropout
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = dropout
    return model


def crop_block_size(model, block_size: int) -> None:
    """nanoGPT's model surgery: keep the first block_size position embeddings."""
    if block_size > model.config.block_size:
        raise ValueError(
            f"block_size {block_size} is larger than the model's {model.config.block_size}: a learned position "
            f"embedding cannot be extended. Use block_size <= {model.config.block_size}."
        )
    if block_size < model.config.block_size:
        wpe = model.transformer.wpe
        wpe.weight = torch.nn.Parameter(wpe.weight.data[:block_size].clone())
        wpe.num_embeddings = block_size
        model.config.block_size = block_size


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (2x and more on GPT-2 shapes, BENCHMARKS.md)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def auto_dtype(cuda: bool) -> str:
    """nanoGPT's choice on CUDA (bf16 where supported, else fp16); on the CPU bf16 autocast where the
    processor has native bf16, else float32."""
    if cuda:
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def decay_groups(params: list, weight_decay: float) -> list[dict]:
    """nanoGPT's configure_optimizers groups: weight decay on 2-D tensors (matmuls, embeddings) only."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def nanogpt_param_groups(model, weight_decay: float) -> list[dict]:
    """nanoGPT's groups over the whole model, in named_parameters order (the tied lm_head once), so
    nanoGPT's train.py accepts our optimizer state."""
    return decay_groups([p for p in model.parameters() if p.requires_grad], weight_decay)


def muon_split(model) -> tuple[list, list]:
    """(Muon's, AdamW's) parameters, as the speedrun splits them: the 2-D matrices of the transformer
    blocks (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) go to Muon, which orthogonalises whole hidden
    matrices; the embeddings (wte, also lm_head, tied: once), wpe, LayerNorm gains and biases to AdamW."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    hidden = [p for name, p in named if name.startswith("transformer.h.") and p.dim() == 2]
    ids = {id(p) for p in hidden}
    return hidden, [p for _, p in named if id(p) not in ids]


def configure_optimizers(model, cfg: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """optimizer=adamw: AdamW on nanoGPT's groups. Fused on CUDA as in nanoGPT, and on the CPU too, where
    torch has had a fused kernel since 2.4: 5-8x faster than the default there (BENCHMARKS.md).
    optimizer=muon: torch.optim.Muon on the blocks' matrices and that AdamW on the rest (muon_split)."""
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(nanogpt_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=betas, **extra)]
    hidden, rest = muon_split(model)
    return [
        torch.optim.AdamW(decay_groups(rest, cfg.weight_decay), lr=cfg.learning_rate, betas=betas, **extra),
        torch.optim.Muon(hidden, lr=cfg.muon_learning_rate, weight_decay=cfg.muon_weight_decay,
                         momentum=muon_momentum(0, cfg), nesterov=True),
    ]


# ---------------------------------------------------------------------------------------------------
# measuring


def flops_per_token(model, block_size: int) -> float:
    """nanoGPT's estimate: 6N (forward and backward matmuls) plus attention, N without wpe."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * block_size


# bf16 dense peak FLOP/s of common accelerators (nanoGPT's MFU reference is the A100's 312e12)
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def default_peak_flops(device: torch.device, dtype: str = "float32") -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak, f"{name} bf16 peak"
        return 312e12, f"{name}: unknown, A100 bf16 peak assumed"
    # CPUs vary too much for a table: measure a matmul in the training dtype on this machine
    gen = torch.Generator().manual_seed(0)  # its own: the global generator belongs to dropout and must not move
    a, b = (torch.randn(1024, 1024, generator=gen).to(getattr(torch, dtype)) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best, f"{dtype} matmul measured on this CPU"


# ---------------------------------------------------------------------------------------------------
# checkpoints and the model folder


def write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name) -> None:
    """The Hugging Face model folder in out_dir: each file written beside and renamed into place."""
    from transformers.utils import logging as hf_logging

    from .saving import umask_modes, write_model_folder

    hf_logging.disable_progress_bar()  # the training bar is the one to watch
    state_dict = accelerator.get_state_dict(model)  # gathered from every process under FSDP/DeepSpeed
    if not accelerator.is_main_process:
        return
    out_dir = Path(cfg.out_dir)
    tmp = out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model)
    extra = {"training_config.json": json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"}
    png = loss_plot(history)
    if png is not None:
        extra["loss.png"] = png
    write_model_folder(
        unwrapped,
        tmp,
        tokenizer,
        model_card=training_card(cfg, unwrapped, history, base_model, dataset_name, png is not None),
        extra_files=extra,
        state_dict=state_dict,
    )
    umask_modes(tmp)
    for item in tmp.iterdir():
        os.replace(item, out_dir / item.name)
    tmp.rmdir()


def remove_stale_temporaries(out_dir: Path) -> None:
    """What a run killed while writing leaves: the half-written model folder and checkpoint."""
    for tmp in [*out_dir.glob(".model.tmp"), *(out_dir / CHECKPOINTS).glob(".*.tmp")]:
        print(f"removing {tmp}, left half-written by an interrupted run")
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def check_same_optimizer(resume_dir: Path, cfg: TrainConfig) -> None:
    """A checkpoint's optimizer state belongs to the optimizer that wrote it: resuming needs the same one."""
    saved = json.loads((resume_dir / STATE_FILE).read_text()).get("config", {}).get("optimizer", "adamw")
    if saved != cfg.optimizer:
        raise ValueError(f"init_from=resume: {resume_dir} was trained with optimizer={saved}, this run asks for "
                         f"optimizer={cfg.optimizer}; pass --optimizer={saved}.")


def check_random_state(resume_dir: Path, rank: int) -> None:
    """Accelerate resumes without a random state it cannot read, saying so only at info level: say it."""
    from accelerate.utils import load

    path = resume_dir / f"random_states_{rank}.pkl"
    try:
        load(path)  # as accelerate's load_state reads it
    except Exception as err:
        print(f"warning: {path} could not be read ({type(err).__name__}: {err}); resuming without its random "
              f"state, so this run is no longer bit-exact with an uninterrupted one.", file=sys.stderr, flush=True)


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
        (tmp / STATE_FILE).write_text(json.dumps({**state, "config": dataclasses.asdict(cfg)}, indent=2) + "\n")
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


def loss_plot(history: list[dict]) -> bytes | None:
    """A PNG of train and val loss over iterations, or None without matplotlib or data."""
    if len(history) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    iters = [h["iter"] for h in history]
    ax.plot(iters, [h["train"] for h in history], label="train")
    ax.plot(iters, [h["val"] for h in history], label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def training_card(cfg, model, history, base_model, dataset_name, has_plot: bool) -> str:
    from .model_card import GPT2_HUB_IDS, hub_datasets, render_model_card, table

    c = model.config
    rows = [{"iter": h["iter"], "train loss": f"{h['train']:.4f}", "val loss": f"{h['val']:.4f}"} for h in history]
    muon = ["muon_learning_rate", "muon_momentum", "muon_momentum_warmup", "muon_momentum_warmup_iters",
            "muon_weight_decay"] if cfg.optimizer == "muon" else []
    wsd = ["cooldown_frac"] if cfg.lr_schedule == "wsd" else []
    names = ["init_from", "dataset", "max_iters", "batch_size", "gradient_accumulation_steps", "block_size", "optimizer",
             *muon, "learning_rate", "min_lr", "lr_schedule", "warmup_iters", *wsd, "weight_decay", "dropout", "dtype"]
    settings = {k: getattr(cfg, k) for k in names}
    sections = {
        "Training": table([{"setting": k, "value": v} for k, v in settings.items()], ["setting", "value"]),
        "Losses": table(rows, ["iter", "train loss", "val loss"]) + ("\n\n![loss curve](loss.png)" if has_plot else ""),
    }
    return render_model_card(
        title=f"{Path(cfg.out_dir).name}: a nanoGPT model trained with hf_nanogpt",
        summary=(
            f"A GPT ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} dimensions, context {c.block_size}, vocabulary "
            f"{c.vocab_size}) trained with hf_nanogpt's Accelerate trainer on {dataset_name}"
            + (f", starting from {base_model}" if base_model else "")
            + (f". Best validation loss {min(h['val'] for h in history):.4f}." if history else ".")
        ),
        sections=sections,
        model_ref=cfg.push_to_hub or cfg.out_dir,
        base_model=GPT2_HUB_IDS.get(base_model, base_model) if base_model and not Path(base_model).exists() else None,
        datasets=hub_datasets(cfg.dataset) if cfg.data_dir is None else None,
    )


def evaluation_windows(data, block_size: int, batch_size: int, eval_iters: int) -> dict[str, list[torch.Tensor]]:
    """The windows every evaluation scores, by split: eval_iters batches of batch_size window starts, drawn
    once from EVAL_SEED (the train split's batches first), whatever the run's seed or number of processes."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return {split: [data.random_starts(split, block_size, batch_size, generator) for _ in range(eval_iters)]
            for split in ("train", "val")}


# ---------------------------------------------------------------------------------------------------
# the loop


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
            print("\nCtrl-C: saving a checkpoint, then stopping (Ctrl-C again stops at once, without it)",
                  file=sys.stderr, flush=True)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train(cfg: TrainConfig) -> dict:
    """Run training as `cfg` says; returns {"iter_num", "best_val_loss", "history", "out_dir", "stopped"}."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from .data import TokenData
    from .saving import check_apart

    # -- everything that can be wrong with the input, before any work
    check_config(cfg)
    data_dir = Path(cfg.data_dir or Path("data") / cfg.dataset)
    check_apart(cfg.out_dir, data_dir, "out_dir", "data_dir")
    data = TokenData(data_dir)
    data.check_block_size(cfg.block_size)
    model, base_model, resume_dir = build_model(cfg, data.vocab_size)
    if resume_dir is not None:
        check_same_optimizer(resume_dir, cfg)
    crop_block_size(model, cfg.block_size)
    if data.vocab_size is not None and data.vocab_size > model.config.vocab_size:
        raise ValueError(f"{data_dir}: vocabulary of {data.vocab_size} tokens, but the model has {model.config.vocab_size} embeddings.")
    tokenizer = data.tokenizer()

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but no CUDA device is available.")
    dtype = cfg.dtype if cfg.dtype != "auto" else auto_dtype(cuda)
    precision = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}.get(dtype)
    if precision is None:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}.")
    if cfg.optimizer == "muon" and precision == "fp16":
        raise ValueError("optimizer=muon with float16: Accelerate's fp16 gradient scaler updates its scale at each "
                         "optimizer's step, and Muon runs beside AdamW; use --dtype=bfloat16 or float32, or --optimizer=adamw.")
    trackers = _trackers(cfg)
    # one process may run train() more than once (notebooks, tests): Accelerate keeps a process-wide state
    # that refuses a second mixed-precision setting, so start from a fresh one (the process group stays)
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision=precision,
        log_with=trackers or None,
        project_dir=cfg.out_dir,
        dynamo_backend="inductor" if cfg.compile else None,
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.optimizer == "muon" and accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise ValueError(f"optimizer=muon under {accelerator.distributed_type.value}: Muon orthogonalises whole matrices, "
                         f"which these shard; use DDP (or one process), or --optimizer=adamw.")
    grad_accum = micro_steps_per_process(cfg, world)
    main = accelerator.is_main_process
    out_dir = Path(cfg.out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
    set_seed(cfg.seed + rank)  # dropout differs per process; the data windows do not (below)

    model.set_attn_implementation(cfg.attn_implementation)
    optimizers = configure_optimizers(model, cfg, "cuda" if cuda else "cpu")
    model, *optimizers = accelerator.prepare(model, *optimizers)  # each in accelerate's checkpoint state
    raw_model = accelerator.unwrap_model(model)

    # the data position: the generator of the training windows (evaluation scores fixed ones)
    train_gen = torch.Generator().manual_seed(cfg.seed)
    eval_windows = evaluation_windows(data, cfg.block_size, cfg.batch_size, cfg.eval_iters)
    iter_num, best_val_loss, history = 0, 1e9, []
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        check_random_state(resume_dir, rank)
        saved = json.loads((resume_dir / STATE_FILE).read_text())
        iter_num, best_val_loss, history = saved["iter_num"], saved["best_val_loss"], saved["history"]
        data_state = load_file(resume_dir / DATA_STATE_FILE)
        train_gen.set_state(data_state["train_gen"])  # (an older checkpoint's eval_gen is not needed)
        base_model = saved.get("base_model")
    dataset_name = cfg.dataset if cfg.data_dir is None else str(data_dir)

    def on_device(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)

    @torch.no_grad()
    def estimate_loss() -> dict:
        """The mean loss over each split's evaluation batches. Process r scores batches r, r + world, ...
        into a vector of zeros elsewhere, and the vectors are summed across processes, so every number of
        processes gets the figures one process gets. Each runs as many forwards (FSDP gathers in each):
        where the batches run out, it scores one again and does not count it."""
        model.eval()
        out = {}
        for split, batches in eval_windows.items():
            losses = torch.zeros(cfg.eval_iters, device=accelerator.device)
            for k in range(rank, world * math.ceil(cfg.eval_iters / world), world):
                x, y = on_device(*data.windows(split, batches[k % cfg.eval_iters], cfg.block_size))
                loss = model(x, shift_labels=y).loss
                if k < cfg.eval_iters:
                    losses[k] = loss
            out[split] = accelerator.reduce(losses, reduction="sum").mean().item()
        model.train()
        return out

    model_written = False  # in this run: every process knows it alike (a file check could differ)

    def checkpoint() -> None:
        nonlocal model_written
        state = {"iter_num": iter_num, "best_val_loss": best_val_loss, "history": history, "base_model": base_model}
        save_checkpoint(accelerator, model, cfg, state, {"train_gen": train_gen.get_state()})
        write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name)
        model_written = True

    tokens_per_iter = grad_accum * world * cfg.batch_size * cfg.block_size
    flops_per_iter = flops_per_token(raw_model, cfg.block_size) * tokens_per_iter / world  # per device
    peak, peak_source = (cfg.peak_flops, "--peak_flops") if cfg.peak_flops > 0 else default_peak_flops(accelerator.device, dtype)
    if main:
        print(f"tokens per iteration will be: {tokens_per_iter:,} ({world} process(es) x {grad_accum} micro-steps x "
              f"{cfg.batch_size} x {cfg.block_size}); {raw_model.num_parameters() / 1e6:.2f}M parameters; "
              f"{accelerator.device} ({accelerator.distributed_type.value}), {dtype}; MFU against {peak / 1e12:.1f} TFLOP/s ({peak_source})")
    if trackers:
        # tensorboard writes to out_dir/<project>: "logs" there, the wandb project name for wandb
        accelerator.init_trackers(cfg.wandb_project if "wandb" in trackers else "logs", config=dataclasses.asdict(cfg),
                                  init_kwargs={"wandb": {"name": cfg.wandb_run_name}} if "wandb" in trackers else {})
    log_file = open(out_dir / LOG_FILE, "a" if resume_dir else "w") if main else None

    preemption = Preemption()
    stopped = None
    model.train()
    bar = tqdm(total=cfg.max_iters + 1, initial=iter_num, desc="training", unit="iter", disable=not main, mininterval=1.0)
    t0 = time.time()
    try:
        while True:
            lr = set_hyperparameters(optimizers, iter_num, cfg)

            if iter_num % cfg.eval_interval == 0:
                losses = estimate_loss()
                if not all(math.isfinite(v) for v in losses.values()):
                    stopped = f"loss became {losses} at iter {iter_num}"
                    break
                history = [h for h in history if h["iter"] != iter_num] + [{"iter": iter_num, **losses}]
                if main:
                    bar.write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                    _log(log_file, {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr})
                if trackers:
                    accelerator.log({"train/loss": losses["train"], "val/loss": losses["val"], "lr": lr}, step=iter_num)
                if losses["val"] < best_val_loss or cfg.always_save_checkpoint:
                    best_val_loss = min(best_val_loss, losses["val"])
                    if iter_num > 0:
                        checkpoint()
                        if cfg.push_checkpoints and cfg.push_to_hub and main:
                            _push(cfg, f"checkpoint at iter {iter_num}")
            if iter_num == 0 and cfg.eval_only:
                break
            if iter_num % cfg.eval_interval == 0:
                t0 = time.time()  # the step time excludes evaluation and checkpointing

            # forward, backward, update; gradients are synchronised on the last micro-step only
            loss_sum = torch.zeros((), device=accelerator.device)
            for micro_step in range(grad_accum):
                x, y = on_device(*data.random_batch("train", cfg.block_size, cfg.batch_size, train_gen, world, rank))
                last = micro_step == grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = model(x, shift_labels=y).loss  # prepare() put the model under autocast
                    accelerator.backward(loss / grad_accum)  # scaled: the accumulated gradient is the mean
                loss_sum += loss.detach()
            if cfg.grad_clip != 0.0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if iter_num % cfg.log_interval == 0:
                lossf = accelerator.reduce(loss_sum / grad_accum, reduction="mean").item()
                if not math.isfinite(lossf):
                    stopped = f"loss became {lossf} at iter {iter_num}"
                    break
                tok_s = tokens_per_iter / dt
                mfu = flops_per_iter / dt / peak
                if main:
                    bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%", refresh=False)
                    _log(log_file, {"iter": iter_num, "loss": lossf, "lr": lr, "dt": dt, "tokens_per_s": tok_s, "mfu": mfu})
                if trackers:
                    accelerator.log({"train/iter_loss": lossf, "lr": lr, "tokens_per_s": tok_s, "mfu": mfu}, step=iter_num)
            iter_num += 1
            bar.update(1)

            if iter_num > cfg.max_iters:
                break
            if _any(accelerator, preemption.requested):
                checkpoint()
                stopped = preemption.signal or "SIGTERM"  # the signal may have reached another process only
                break
    finally:
        preemption.restore()
        bar.close()
        if log_file is not None:
            log_file.close()

    if stopped in ("SIGTERM", "SIGINT"):
        if main:
            print(f"{stopped}: saved a checkpoint at iter {iter_num} in {out_dir / CHECKPOINTS}; resume with --init_from=resume")
    elif stopped is not None:
        accelerator.end_training()
        raise FloatingPointError(f"{stopped}: stopping; the last good checkpoint is kept in {out_dir / CHECKPOINTS}.")
    elif not model_written and resume_dir is None:
        # short runs that never reached a checkpoint still leave a usable model
        write_model(accelerator, model, cfg, tokenizer, history, base_model, dataset_name)
    if cfg.push_to_hub and main and stopped is None:
        _push(cfg, "hf_nanogpt training run")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"iter_num": iter_num, "best_val_loss": best_val_loss, "history": history, "out_dir": str(out_dir), "stopped": stopped}


def _any(accelerator, flag: bool) -> bool:
    """True on every process when it is true on any (a SIGTERM may reach only some)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def _log(log_file, record: dict) -> None:
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()


def _trackers(cfg: TrainConfig) -> list[str]:
    import importlib.util

    if cfg.log_with == "none":
        names = []
    elif cfg.log_with == "auto":
        names = ["tensorboard"] if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else []
    else:
        names = [n.strip() for n in cfg.log_with.split(",") if n.strip()]
    if cfg.wandb_log and "wandb" not in names:
        names.append("wandb")
    return names


def _push(cfg: TrainConfig, message: str) -> None:
    from .hub import push_to_hub

    push_to_hub(cfg.out_dir, cfg.push_to_hub, private=cfg.hub_private, commit_message=message)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or stopped by SIGTERM with a checkpoint), 1 a NaN loss, 2 bad input (`error: ...`,
    as every hf-nanogpt command), 130 Ctrl-C (as shells use)."""
    cfg = parse_args(argv)
    try:
        result = train(cfg)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a second Ctrl-C in the loop, or one before it started
        print(f"stopped by Ctrl-C at once; any complete checkpoint in {Path(cfg.out_dir) / CHECKPOINTS} is kept",
              file=sys.stderr)
        return 130
    return 130 if result["stopped"] == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
