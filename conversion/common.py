"""What every conversion shares: its error type, the output-folder rule, and the logits check."""

import os
from pathlib import Path

import torch

from hf_nanogpt.saving import check_apart

MAX_ABS_DIFF = 1e-5  # float32 logits; scaled up when logits are large (see `logits_tolerance`)


class ConversionError(ValueError):
    """Input that cannot be converted; the message names the file and what is wrong."""


def require_writable_output(out_dir: str | os.PathLike, overwrite: bool, source: str | os.PathLike) -> Path:
    """Checked before any work: OUT is apart from the source, and an existing non-empty OUT is only
    replaced with --overwrite."""
    check_apart(out_dir, source)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty: pass --overwrite to replace it.")
    return out_dir


def probe_batch(block_size: int, vocab_limit: int) -> torch.Tensor:
    """A fixed batch of token ids to compare logits on: (2, min(block_size, 32))."""
    return torch.randint(0, vocab_limit, (2, min(block_size, 32)), generator=torch.Generator().manual_seed(0))


def logits_tolerance(reference: torch.Tensor) -> float:
    """1e-5, relative to the logits' magnitude once it exceeds 1: float32 itself resolves only about
    1e-5 at |logit| = 100, as trained GPT-2 logits are."""
    return MAX_ABS_DIFF * max(1.0, reference.abs().max().item())


def check_logits(model_logits: torch.Tensor, reference: torch.Tensor, what: str, log=print) -> float:
    """Print and check max |model_logits - reference|; raise ConversionError above the tolerance."""
    diff = (model_logits.float() - reference.float()).abs().max().item()
    tolerance = logits_tolerance(reference)
    log(f"verification: {what}: max |logits difference| = {diff:.3e} (tolerance {tolerance:.1e})")
    if not diff <= tolerance:
        raise ConversionError(f"conversion check failed: {what}: logits differ by {diff:.3e} (> {tolerance:.1e}); nothing written.")
    return diff
