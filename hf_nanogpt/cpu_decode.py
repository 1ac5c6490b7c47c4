"""Faster weight products for decoding on the CPU, attached to a loaded model from outside:

    model = attach_cpu_decode(AutoModelForCausalLM.from_pretrained(folder))

Decoding multiplies a few rows by each weight matrix: its run time is reading the weights, and which CPU kernel
reads them fastest depends on the machine and the dtype. F.linear is the fastest float32 product on the Intel
Xeons we measured (AVX-512, AMX), but it read float32 weights at half the bandwidth on an AMD EPYC, where one
batched matmul over row blocks of the weight was 1.8x faster; a bfloat16 matrix-vector product (torch.mv) reads
bfloat16 weights 1.4x faster than F.linear on the Xeons, and oneDNN on a copy of the weight reordered into its
blocked layout (what vLLM's CPU backend runs) was 2-10x faster than F.linear at 16 rows on the AMD EPYC. So no
choice is built in: the first time a weight shape meets a few rows in CPU inference, each product is timed on it
from cold caches (as decoding reads the weights), and the fastest is kept for the process if it beats F.linear by
DECODE_MARGIN (BENCHMARKS.md: "hf_nanogpt.cpu_decode against F.linear", and B5). Training, GPUs and torch.compile
always take F.linear.

The model file knows nothing of this: attaching changes the class of the model's nn.Linear modules to a subclass
with the same parameters, so the state dict, save_pretrained and the remote code saved with the weights are
those of the plain model.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.weak import WeakIdKeyDictionary

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


# the weights in oneDNN's blocked layout, made the first time each weight meets onednn_packed: a second copy of
# that weight, beside the parameter (not in the state dict), remade if the parameter changes in place
PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()
PACK_ROWS = 16  # the number of rows oneDNN's layout is chosen for; any number of rows runs on it


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    version = weight._version
    cached = PACKED.get(weight)
    if cached is None or cached[0] != version:
        cached = PACKED[weight] = (version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS))
    return cached[1]


def onednn_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) through oneDNN on the weight reordered once into its blocked layout (as vLLM's CPU
    backend and Inductor's frozen graphs run linear layers): on the AMD EPYC it reads float32 weights 2-10x faster
    than F.linear at a few rows; the price is a second copy of each weight it is chosen for (PACKED)."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed_weight(weight), bias, "none", [], "")
    return y.view(*x.shape[:-1], -1)


DECODE_MATMULS = {"linear": F.linear, "row_blocks": row_blocks, "one_row": one_row, "onednn_packed": onednn_packed}


def decode_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The fastest of DECODE_MATMULS for this product on this machine, timed the first time its shape comes."""
    rows = x.numel() // x.shape[-1]
    # one choice for a bucket of row counts (1, 2, 3-4, 5-8, ..., 17-32): continuous batching meets every count
    # from 1 to its batch size, and each timing costs a few of the slowest product's runs
    bucket = 1 << (rows - 1).bit_length()
    key = (bucket, *weight.shape, weight.dtype, bias is not None, torch.get_num_threads())
    if key not in DECODE_CHOICE:
        candidates = [name for name in DECODE_MATMULS if not (name == "one_row" and rows > 1)]
        if key[-1] == 1:  # row blocks are per thread
            candidates.remove("row_blocks")
        if not onednn_available():
            candidates.remove("onednn_packed")
        seconds = time_products({name: DECODE_MATMULS[name] for name in candidates}, x, weight, bias)
        best = min(seconds, key=seconds.get)
        DECODE_CHOICE[key] = best if seconds[best] <= DECODE_MARGIN * seconds["linear"] else "linear"
        if DECODE_CHOICE[key] != "onednn_packed":  # the copy made to time it is not kept
            PACKED.pop(weight, None)
    return DECODE_CHOICE[key]


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache as Linux reports it, 32 MiB where it cannot be read."""
    try:
        caches = Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")
        size = max(caches, key=lambda c: int((c / "level").read_text())).joinpath("size").read_text().strip()
        return int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[size[-1]]
    except (OSError, ValueError, KeyError):  # no sysfs (not Linux), or a format not known
        return 32 << 20


EVICT: list[torch.Tensor] = []  # a buffer twice the last-level cache, made at the first timing


def evict_caches() -> None:
    """Writes over the CPU caches: a decode step reads each weight from memory (the model is larger than the
    caches), so each product is timed that way, not on a weight left in the cache by the run before. Timed warm,
    a matrix-vector product won on the AMD EPYC for weights that fit its 32 MiB cache and lost in decoding."""
    with torch.inference_mode(False):  # a normal tensor, whatever mode the first timing came in (sample: inference)
        if not EVICT:
            EVICT.append(torch.empty(2 * last_level_cache_bytes() // 4))
        EVICT[0].fill_(1.0)


def time_products(products: dict[str, Callable], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  rounds: int = 5) -> dict[str, float]:
    """Each product's fastest of `rounds` timed runs, after a warm-up, each from cold caches; the products take
    turns in every round, so a change in machine load falls on all of them."""
    seconds = {name: math.inf for name in products}
    failed = set()
    for round_ in range(rounds + 1):
        for name, product in products.items():
            if name in failed:
                continue
            evict_caches()
            start = time.perf_counter()
            try:
                product(x, weight, bias)
            except RuntimeError:  # a kernel this build or CPU lacks for this dtype (oneDNN): never chosen
                failed.add(name)
                continue
            if round_:  # round 0 is the warm-up
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


__all__ = ["attach_cpu_decode"]
