"""nanoGPT's estimate_loss, on fixed windows shared out among the processes, so val losses compare across
runs, evaluations and numbers of processes; with the loss in bits per byte beside it, which compares across
tokenizers too."""

import math

import torch
import torch.nn.functional as F

from ..data.tokens import IGNORE_INDEX

EVAL_SEED = (
    1338  # of the evaluation windows; it was the default seed + 1, so one process's first evaluation is as before
)


def evaluation_windows(data, block_size: int, batch_size: int, eval_iters: int) -> dict[str, list[torch.Tensor]]:
    """The windows every evaluation scores, by split: eval_iters batches of batch_size window starts, drawn
    once from EVAL_SEED (the train split's batches first), whatever the run's seed or number of processes."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return {
        split: [data.random_starts(split, block_size, batch_size, generator) for _ in range(eval_iters)]
        for split in ("train", "val")
    }


def check_counted_targets(data, windows: dict[str, list[torch.Tensor]], block_size: int) -> None:
    """Chat data: each split's evaluation windows hold a target to score (an assistant token), else its loss
    would be a mean over nothing, and the run would stop on a NaN at its first evaluation."""
    if not data.chat:
        return
    for split, batches in windows.items():
        if not any(data.counted_targets(split, starts, block_size) for starts in batches):
            raise ValueError(
                f"{data.dir}: the {split} split's evaluation windows ({len(batches)} batches of {len(batches[0])}, "
                f"block_size {block_size}) hold no assistant token, so there is no loss to measure; raise "
                f"--eval_iters or --batch_size, or give the {split} split more conversations."
            )


def token_losses(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean loss, each target's loss in nats (B*T,)) of one batch, from one forward. The mean is nll_loss's
    own over float32 log-probabilities, as transformers' loss computes it, so it is bit for bit what
    `model(x, shift_labels=y).loss` gives: over the counted targets (not IGNORE_INDEX), NaN when there are none.
    A target not counted has loss 0. The logits are gone when this returns."""
    logits = model(x).logits  # (B, T, vocab_size)
    logprobs = F.log_softmax(logits.float().flatten(0, 1), dim=-1)  # (B*T, vocab_size)
    targets = y.flatten()  # (B*T,)
    nats = -logprobs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)  # (B*T,); an ignored target reads id 0
    return F.nll_loss(logprobs, targets, ignore_index=IGNORE_INDEX), nats.masked_fill(targets == IGNORE_INDEX, 0.0)


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """nanochat's evaluate_bpb: the targets' loss in bits over the bytes of text they stand for."""
    return nats / (math.log(2) * num_bytes) if num_bytes else math.nan


@torch.no_grad()
def estimate_loss(
    model, accelerator, data, windows: dict[str, list[torch.Tensor]], block_size: int, token_bytes: torch.Tensor
) -> dict[str, float]:
    """{"train": loss, "val": loss, "train_bpb": bits per byte, "val_bpb": ...} over each split's evaluation
    batches. The loss is the mean loss per counted target (chat data counts the assistant's tokens only): every
    counted target's nats over their number. Where every batch counts as many targets (text data: all of them),
    that is the mean of the batches' mean losses, computed so: the figure text runs have always logged, bit for
    bit. Bits per byte sum every counted target's loss in nats and the bytes its id stands for (token_bytes,
    token_byte_lengths' table on the device), leaving out targets of no bytes (special tokens) from both.
    Process r scores batches r, r + world, ... into vectors of zeros elsewhere, and the vectors are summed across
    processes, so every number of processes gets the figures one process gets. Each runs as many forwards (FSDP
    gathers in each): where the batches run out, it scores one again and does not count it."""
    world, rank = accelerator.num_processes, accelerator.process_index
    model.eval()
    out = {}
    for split, batches in windows.items():
        n = len(batches)
        nats = torch.zeros(3, n, device=accelerator.device)  # each batch's mean loss; its nats; those with bytes
        counts = torch.zeros(2, n, dtype=torch.int64, device=accelerator.device)  # its counted targets; their bytes
        for k in range(rank, world * math.ceil(n / world), world):
            x, y = data.windows(split, batches[k % n], block_size)
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            loss, target_nats = token_losses(model, x, y)
            counted = y.flatten() != IGNORE_INDEX  # (B*T,)
            target_bytes = token_bytes[y.flatten().clamp(min=0)] * counted  # (B*T,)
            if k < n:
                nats[0, k] = torch.where(counted.any(), loss, 0.0)  # a batch with none has a NaN mean, weighing 0
                nats[1, k] = target_nats.sum()
                nats[2, k] = target_nats.masked_fill(target_bytes == 0, 0.0).sum()
                counts[0, k] = counted.sum()
                counts[1, k] = target_bytes.sum()
        nats = accelerator.reduce(nats, reduction="sum")
        counts = accelerator.reduce(counts, reduction="sum").cpu()
        targets = counts[0]
        if (targets == targets[0]).all():  # sum / count = the mean of the batch means, which rounds as it always has
            out[split] = nats[0].mean().item() if targets[0] else math.nan
        else:
            out[split] = nats[1].cpu().double().sum().item() / targets.sum().item()
        out[f"{split}_bpb"] = bits_per_byte(nats[2].cpu().double().sum().item(), counts[1].sum().item())
    model.train()
    return out
