"""Writing model folders: atomically, with the tokenizer and a generation config that fits the model.

Every producer of a model folder (the demo, the conversions, the trainer) goes through
`save_model_folder`, so each folder holds the same set of files and none is ever left half-written.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .chat import end_of_turn_id, has_chat_format

# generation_config's suppress_tokens as a logit bias (0, and -inf on those ids) under the name `lm_head.bias`, for
# servers that read every *.safetensors file of a folder and take an lm_head.bias as the output bias: vLLM's
# Transformers backend (0.32) honours no suppress_tokens but adds that bias, so it never emits a padded id either.
# transformers reads model.safetensors only (the model and its state dict stay nanoGPT's), and llama.cpp's converter
# reads model*.safetensors only: hence a name that does not start with "model".
SUPPRESS_BIAS_FILE = "suppress_tokens_bias.safetensors"


def check_apart(
    out: str | os.PathLike, source: str | os.PathLike, out_name: str = "OUT", source_name: str = "SRC"
) -> None:
    """Refuse, before any work, an output that is its source, holds it or lies inside it: replacing the
    output would delete the source (a Hub id, which is no local path, is never in the way)."""
    src, dst = Path(source), Path(out)
    if not src.exists():
        return
    src, dst = src.resolve(), dst.resolve()
    if src == dst:
        how = "is"
    elif src in dst.parents:
        how = "lies inside"
    elif dst in src.parents:
        how = "holds"
    else:
        return
    raise ValueError(
        f"{out_name} {out} {how} {source_name} {source}: writing {out_name} would replace or delete what it is "
        f"made from. Pick an {out_name} outside {source_name} (e.g. a sibling folder)."
    )


def current_umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def umask_modes(folder: Path) -> None:
    """Give `folder` and everything in it the modes the umask gives new folders and files (0755 and 0644
    under umask 022): tempfile's folders and safetensors' files are private (0700, 0600)."""
    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out_dir`; on success it replaces `out_dir` by rename.

    On any exception the temporary folder is removed and `out_dir` is left as it was. What lands gets the
    modes the umask gives (`umask_modes`), so that other users and a cluster's jobs can read it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: pass overwrite=True (--overwrite) to replace it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        umask_modes(tmp)
        if out_dir.exists():
            # rename the old folder aside first, so that at every moment one complete folder exists
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generation_config_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> GenerationConfig:
    """Generation defaults that work out of the box for this model and tokenizer.

    - max_length is block_size: every prompt gets the room that is left in the context, a caller's own
      max_length or max_new_tokens (lm-evaluation-harness's max_gen_toks) is not overridden, and the
      text-generation pipeline's default of 256 new tokens, which would overrun a small model's wpe, is
      not applied;
    - bos/eos/pad from the tokenizer, pad = eos when the tokenizer has none (batched generation needs one);
    - a tokenizer with the chat format (hf_nanogpt.chat) also ends generation at the end of a turn, <|im_end|>:
      eos is [<|im_end|>, the tokenizer's eos], so generate() and the text-generation pipeline stop after one
      reply instead of writing the next user turn;
    - ids the tokenizer cannot decode (nanoGPT pads GPT-2's 50257 up to 50304) are never generated.
    """
    config = model.config
    gen = GenerationConfig(max_length=config.block_size, do_sample=True, top_k=200, temperature=0.8)
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        gen.bos_token_id = tokenizer.bos_token_id
        if has_chat_format(tokenizer):
            gen.eos_token_id = [end_of_turn_id(tokenizer)] + ([eos] if eos is not None else [])
        else:
            gen.eos_token_id = eos
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if len(tokenizer) < config.vocab_size:
            gen.suppress_tokens = list(range(len(tokenizer), config.vocab_size))
    return gen


def suppress_tokens_bias(generation_config: GenerationConfig, vocab_size: int) -> torch.Tensor | None:
    """The (vocab_size,) logit bias of SUPPRESS_BIAS_FILE: -inf on generation_config.suppress_tokens, 0 elsewhere;
    None when nothing is suppressed."""
    suppress = generation_config.suppress_tokens
    if not suppress:
        return None
    bias = torch.zeros(vocab_size)
    bias[[i for i in suppress if 0 <= i < vocab_size]] = float("-inf")
    return bias


def write_model_folder(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generation_config: GenerationConfig | None = None,
    model_card: str | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write `model` (safetensors, config, remote code), its tokenizer, generation config (its suppress_tokens also
    as SUPPRESS_BIAS_FILE, for vLLM), model card and `extra_files` (name -> text or bytes) into `folder` (not atomic:
    see `save_model_folder`).
    Special token ids are copied from the tokenizer into the model config, and the tokenizer's
    model_max_length becomes block_size (so truncation in pipelines, Trainer and TRL fits the model).
    `state_dict` replaces the model's own (a sharded model's gathered weights)."""
    folder = Path(folder)
    if tokenizer is not None:
        tokenizer.model_max_length = model.config.block_size
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.config, name, getattr(tokenizer, name))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
    model.generation_config = generation_config or generation_config_for(model, tokenizer)
    model.save_pretrained(folder, state_dict=state_dict)
    bias = suppress_tokens_bias(model.generation_config, model.config.vocab_size)
    if bias is not None:
        save_file({"lm_head.bias": bias}, folder / SUPPRESS_BIAS_FILE)
    elif (folder / SUPPRESS_BIAS_FILE).exists():  # left by an earlier write of this folder
        (folder / SUPPRESS_BIAS_FILE).unlink()
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if model_card is not None:
        (folder / "README.md").write_text(model_card, encoding="utf-8")
    for name, content in (extra_files or {}).items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content, encoding="utf-8")
    return folder


def save_model_folder(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generation_config: GenerationConfig | None = None,
    model_card: str | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """`write_model_folder` into `out_dir` atomically: written beside it, renamed at the end."""
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        write_model_folder(model, tmp, tokenizer, generation_config, model_card, extra_files)
    return Path(out_dir)


__all__ = [
    "SUPPRESS_BIAS_FILE",
    "atomic_output_dir",
    "check_apart",
    "umask_modes",
    "generation_config_for",
    "save_model_folder",
    "suppress_tokens_bias",
    "write_model_folder",
]
