"""Model FLOPs utilisation: nanoGPT's FLOPs per token and each device's peak."""

import time

import torch


def flops_per_token(model, block_size: int) -> float:
    """nanoGPT's estimate: 6N (forward and backward matmuls) plus attention, N without wpe."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * block_size


# bf16 dense peak FLOP/s of common accelerators (nanoGPT's MFU reference is the A100's 312e12)
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


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
