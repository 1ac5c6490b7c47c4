"""nanoGPT's estimate_loss, on fixed windows shared out among the processes, so val losses compare across
runs, evaluations and numbers of processes; with the loss in bits per byte beside it, which compares across
tokenizers too."""

import math

import torch
import torch.nn.functional as F

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


def token_losses(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean loss, each target's loss in nats (B*T,)) of one batch, from one forward. The mean is nll_loss's
    own over float32 log-probabilities, as transformers' loss computes it, so it is bit for bit what
    `model(x, shift_labels=y).loss` gives. The logits are gone when this returns."""
    logits = model(x).logits  # (B, T, vocab_size)
    logprobs = F.log_softmax(logits.float().flatten(0, 1), dim=-1)  # (B*T, vocab_size)
    targets = y.flatten()  # (B*T,)
    return F.nll_loss(logprobs, targets), -logprobs.gather(1, targets[:, None]).squeeze(1)


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """nanochat's evaluate_bpb: the targets' loss in bits over the bytes of text they stand for."""
    return nats / (math.log(2) * num_bytes) if num_bytes else math.nan


@torch.no_grad()
def estimate_loss(
    model, accelerator, data, windows: dict[str, list[torch.Tensor]], block_size: int, token_bytes: torch.Tensor
) -> dict[str, float]:
    """{"train": loss, "val": loss, "train_bpb": bits per byte, "val_bpb": ...} over each split's evaluation
    batches: the loss is the mean of the batches' mean loss per token; bits per byte sum every target's loss in
    nats and the bytes its id stands for (token_bytes, token_byte_lengths' table on the device), leaving out
    targets of no bytes (special tokens) from both. Process r scores batches r, r + world, ... into vectors of
    zeros elsewhere, and the vectors are summed across processes, so every number of processes gets the figures
    one process gets. Each runs as many forwards (FSDP gathers in each): where the batches run out, it scores
    one again and does not count it."""
    world, rank = accelerator.num_processes, accelerator.process_index
    model.eval()
    out = {}
    for split, batches in windows.items():
        n = len(batches)
        losses = torch.zeros(2, n, device=accelerator.device)  # each batch's mean loss; its nats over bytes
        num_bytes = torch.zeros(n, dtype=torch.int64, device=accelerator.device)
        for k in range(rank, world * math.ceil(n / world), world):
            x, y = data.windows(split, batches[k % n], block_size)
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            loss, nats = token_losses(model, x, y)
            target_bytes = token_bytes[y.flatten()]  # (B*T,)
            if k < n:
                losses[0, k] = loss
                losses[1, k] = nats.masked_fill(target_bytes == 0, 0.0).sum()
                num_bytes[k] = target_bytes.sum()
        losses = accelerator.reduce(losses, reduction="sum")
        num_bytes = accelerator.reduce(num_bytes, reduction="sum")
        out[split] = losses[0].mean().item()
        out[f"{split}_bpb"] = bits_per_byte(losses[1].cpu().double().sum().item(), num_bytes.sum().item())
    model.train()
    return out
