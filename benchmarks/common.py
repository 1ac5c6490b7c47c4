"""What every benchmark shares: alternating timed runs, medians, the machine, the probes, and GPT-2 pairs
(GPT2LMHeadModel and hf_nanogpt holding the same weights, through hf_nanogpt's own GPT-2 conversion)."""

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

import hf_nanogpt
from hf_nanogpt.conversion.gpt2 import gpt2_as_nanogpt

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
GPT2_MEDIUM = dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, n_positions=1024)
TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=96, n_positions=128)  # for the test of the suite


@dataclass
class Timings:
    """Seconds per run for each side, all taken in one alternating loop."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return statistics.median(self.runs[side])

    def ratio(self, ours: str, theirs: str) -> float:
        """Time ours / time theirs (below 1: we are faster)."""
        return self.median(ours) / self.median(theirs)


def alternate(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, desc: str = "") -> Timings:
    """Run each side `warmup` times, then `repeats` timed rounds, the sides taking turns in every round
    (so a change in machine load falls on both). A progress bar on stderr counts the rounds."""
    timings = Timings({name: [] for name in sides})
    with tqdm(total=warmup + repeats, desc=desc or " / ".join(sides), unit="round", leave=False) as bar:
        for _ in range(warmup):
            for fn in sides.values():
                fn()
            bar.update(1)
        for _ in range(repeats):
            for name, fn in sides.items():
                start = time.perf_counter()
                fn()
                timings.runs[name].append(time.perf_counter() - start)
            bar.update(1)
    return timings


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return alternate({"fn": fn}, repeats, warmup).median("fn")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    info = {
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} (torch threads: {torch.get_num_threads()})",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_nanogpt": hf_nanogpt.__version__,
        "Python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name()
    return info


def matmul_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of torch.mm on two n x n matrices: the machine's practical peak for dense matmuls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = median_time(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / seconds


def gpt2_pair(shape: dict, folder: Path, seed: int = 0):
    """A randomly initialised GPT2LMHeadModel of `shape`, saved to `folder`, and hf_nanogpt's conversion
    of that folder: (gpt2, ours), both eval and float32, with the same weights."""
    torch.manual_seed(seed)
    last = shape["vocab_size"] - 1  # GPT-2's <|endoftext|> is its last token
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=last, eos_token_id=last)
    gpt2 = GPT2LMHeadModel(config).eval()
    gpt2.save_pretrained(folder)
    ours, _ = gpt2_as_nanogpt(folder)
    return gpt2, ours.eval()


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters (a tied weight counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_cell(ratio: float) -> str:
    return f"{ratio:.2f}x"
