"""Faster weight products for decoding on the CPU, attached to a loaded model from outside:

    model = attach_cpu_decode(AutoModelForCausalLM.from_pretrained(folder))

Decoding multiplies a few rows by each weight matrix: its run time is reading the weights, and which CPU kernel
reads them fastest depends on the machine and the dtype. F.linear is the fastest float32 product on the Intel
Xeons we measured (AVX-512, AMX), but it read float32 weights at half the bandwidth on an AMD EPYC, where one
batched matmul over row blocks of the weight was 1.8x faster; a bfloat16 matrix-vector product (torch.mv) reads
bfloat16 weights 1.4x faster than F.linear on the Xeons. So no choice is built in: the first time a weight shape
meets a few rows in CPU inference, each product is timed on it, and the fastest is kept for the process if it
beats F.linear by DECODE_MARGIN (BENCHMARKS.md: "hf_nanogpt.cpu_decode against F.linear"). Training, GPUs and
torch.compile always take F.linear.

The model file knows nothing of this: attaching changes the class of the model's nn.Linear modules to a subclass
with the same parameters, so the state dict, save_pretrained and the remote code saved with the weights are
those of the plain model.
"""

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

FEW_ROWS = 32
DECODE_MARGIN = 0.9  # another product must take at most 0.9x F.linear's time, so a near tie keeps F.linear
DECODE_CHOICE: dict[tuple, str] = {}  # (rows, out, in, dtype, bias, threads) -> name in DECODE_MATMULS


class DecodeLinear(nn.Linear):
    """nn.Linear (same parameters, same results to rounding), at decode on the CPU through the fastest product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if few_rows_on_cpu(x, self.weight):
            return DECODE_MATMULS[decode_matmul(x, self.weight, self.bias)](x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def attach_cpu_decode(model: nn.Module) -> nn.Module:
    """Give every nn.Linear of `model` the CPU decode products, in place (their class becomes DecodeLinear: no
    parameter, buffer or state-dict key changes). Harmless on a GPU or in training, which keep F.linear."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = DecodeLinear
    return model


def few_rows_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A decode step's product: CPU inference outside torch.compile, a few rows, a contiguous weight."""
    return (
        x.device.type == "cpu"
        and 0 < x.numel() <= FEW_ROWS * x.shape[-1]
        and x.dtype == weight.dtype
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear's inputs, not the others'
        and not torch.compiler.is_compiling()
        and weight.is_contiguous()
    )


def row_blocks(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) as one bmm over a row block of weight per CPU thread."""
    n_out, n_in = weight.shape
    rows, blocks = x.reshape(-1, n_in).t(), torch.get_num_threads()  # rows (in, m)
    split = n_out // blocks * blocks
    y = torch.bmm(weight[:split].view(blocks, -1, n_in), rows.expand(blocks, n_in, rows.shape[1]))  # (blocks, per, m)
    y = y.view(split, -1).t()  # (m, split)
    if split < n_out:  # the last n_out % blocks outputs
        y = torch.cat([y, F.linear(rows.t(), weight[split:])], dim=1)
    if bias is not None:
        y = y + bias
    return y.contiguous().view(*x.shape[:-1], n_out)


def one_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for a single row, as a matrix-vector product."""
    row = x.reshape(-1)
    y = torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)
    return y.view(*x.shape[:-1], -1)


DECODE_MATMULS = {"linear": F.linear, "row_blocks": row_blocks, "one_row": one_row}


def decode_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The fastest of DECODE_MATMULS for this product on this machine, timed the first time its shape comes."""
    rows = x.numel() // x.shape[-1]
    key = (rows, *weight.shape, weight.dtype, bias is not None, torch.get_num_threads())
    if key not in DECODE_CHOICE:
        candidates = [name for name in DECODE_MATMULS if not (name == "one_row" and rows > 1)]
        if key[-1] == 1:  # row blocks are per thread
            candidates.remove("row_blocks")
        seconds = time_products({name: DECODE_MATMULS[name] for name in candidates}, x, weight, bias)
        best = min(seconds, key=seconds.get)
        DECODE_CHOICE[key] = best if seconds[best] <= DECODE_MARGIN * seconds["linear"] else "linear"
    return DECODE_CHOICE[key]


def time_products(products: dict[str, Callable], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  rounds: int = 5) -> dict[str, float]:
    """Each product's fastest of `rounds` timed runs, after a warm-up; the products take turns in every round,
    so a change in machine load falls on all of them."""
    seconds = {name: math.inf for name in products}
    for round_ in range(rounds + 1):
        for name, product in products.items():
            start = time.perf_counter()
            product(x, weight, bias)
            if round_:  # round 0 is the warm-up
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


__all__ = ["attach_cpu_decode"]
