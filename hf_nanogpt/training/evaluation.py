"""nanoGPT's estimate_loss, on fixed windows shared out among the processes, so val losses compare across
runs, evaluations and numbers of processes."""

import math

import torch

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


@torch.no_grad()
def estimate_loss(
    model, accelerator, data, windows: dict[str, list[torch.Tensor]], block_size: int
) -> dict[str, float]:
    """The mean loss over each split's evaluation batches. Process r scores batches r, r + world, ... into a
    vector of zeros elsewhere, and the vectors are summed across processes, so every number of processes gets
    the figures one process gets. Each runs as many forwards (FSDP gathers in each): where the batches run
    out, it scores one again and does not count it."""
    world, rank = accelerator.num_processes, accelerator.process_index
    model.eval()
    out = {}
    for split, batches in windows.items():
        n = len(batches)
        losses = torch.zeros(n, device=accelerator.device)
        for k in range(rank, world * math.ceil(n / world), world):
            x, y = data.windows(split, batches[k % n], block_size)
            loss = model(x.to(accelerator.device), shift_labels=y.to(accelerator.device)).loss
            if k < n:
                losses[k] = loss
        out[split] = accelerator.reduce(losses, reduction="sum").mean().item()
    model.train()
    return out
