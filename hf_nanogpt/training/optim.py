"""Optimizers and schedules: nanoGPT's AdamW groups and cosine schedule, modded-nanogpt's Muon and
warmup-stable-decay."""

import math
from collections.abc import Callable

import torch

from .config import LrSchedule, TrainConfig


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
    if not cfg.decay_lr or it < cfg.warmup_iters:
        return get_lr(it, cfg)  # nanoGPT's warmup (or its constant lr)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    cooldown_start = max(cfg.warmup_iters, cfg.lr_decay_iters - round(cfg.cooldown_frac * cfg.lr_decay_iters))
    if it < cooldown_start:
        return cfg.learning_rate
    remaining = (cfg.lr_decay_iters - it) / (cfg.lr_decay_iters - cooldown_start)
    return cfg.min_lr + remaining * (cfg.learning_rate - cfg.min_lr)


LR_SCHEDULES: dict[LrSchedule, Callable[[int, TrainConfig], float]] = {
    "cosine": get_lr,
    "wsd": get_wsd_lr,
}  # one per config.LrSchedule choice


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
        return [
            torch.optim.AdamW(
                nanogpt_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=betas, **extra
            )
        ]
    hidden, rest = muon_split(model)
    return [
        torch.optim.AdamW(decay_groups(rest, cfg.weight_decay), lr=cfg.learning_rate, betas=betas, **extra),
        torch.optim.Muon(
            hidden,
            lr=cfg.muon_learning_rate,
            weight_decay=cfg.muon_weight_decay,
            momentum=muon_momentum(0, cfg),
            nesterov=True,
        ),
    ]
