"""What every conversion shares: its error type, the keys that are not weights, the output-folder rule, atomic
single-file outputs, the logits check, and the tanh GELU of the runtimes that have no other."""

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from hf_nanogpt.saving import check_apart, current_umask

MAX_ABS_DIFF = 1e-5  # float32 logits; scaled up when logits are large (see `logits_tolerance`)
# keys that are not weights: the causal-mask buffers (mask, masked value) older nanoGPT and GPT-2 checkpoints saved
DROPPED_KEYS = re.compile(r"\.attn\.(bias|masked_bias)$")


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


def require_writable_file(
    out_file: str | os.PathLike, overwrite: bool, source: str | os.PathLike, example: str
) -> Path:
    """`require_writable_output` for an output that is one file (a GGUF, an llm.c .bin): a folder is refused."""
    if Path(out_file).is_dir():
        raise ConversionError(
            f"{out_file} is a folder; expected the path of the file to write (e.g. {Path(out_file) / example})."
        )
    return require_writable_output(out_file, overwrite, source)


def load_for_export(model_id: str | os.PathLike, trust_remote_code: bool = False):
    """(our model in float32 and eval mode, its tokenizer or None) from a model folder or Hub id: what every
    export starts from. Anything but a nanogpt model is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_nanogpt  # noqa: F401  (registers the nanogpt model type with the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=torch.float32, trust_remote_code=trust_remote_code
    ).eval()
    if model.config.model_type != "nanogpt":
        raise ConversionError(
            f"{model_id}: expected a nanogpt model, found model_type {model.config.model_type!r}. "
            f"Convert it first (GPT-2: `hf-nanogpt convert gpt2`)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` by rename, with the mode the
    umask gives new files; on any exception it is removed and `path` is left as it was. For outputs that
    are one file (a GGUF, an llm.c .bin), as saving.atomic_output_dir is for folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private (0600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        raise ConversionError(
            f"conversion check failed: {what}: logits differ by {diff:.3e} (> {tolerance:.1e}); nothing written."
        )
    return diff


def use_tanh_gelu(model: nn.Module) -> None:
    """Every GELU of `model` becomes the tanh approximation, in place: what llama.cpp's and llm.c's GPT-2
    compute whatever the model was trained with."""
    for module in model.modules():
        if isinstance(module, nn.GELU):
            module.approximate = "tanh"


def exact_gelu_warning(model_id, runtime: str) -> str:
    return (
        f"warning: {model_id} uses the exact GELU (activation 'gelu', nanoGPT's); {runtime} computes only the tanh "
        f"approximation (gelu_new), so its logits differ from this model's"
    )


def logits_change(model: nn.Module, ids: torch.Tensor, change, message: str, log=print, logits=None) -> torch.Tensor:
    """Apply `change(model)` in place and log `message` with how far it moved the logits on `ids` (before:
    `logits`, computed when not given), so that no change an export makes is silent. Returns the new logits."""
    with torch.no_grad():
        before = model(ids).logits if logits is None else logits
        change(model)
        after = model(ids).logits
    log(f"{message}: max |logits difference| = {(after - before).abs().max().item():.3e} on the probe batch")
    return after
