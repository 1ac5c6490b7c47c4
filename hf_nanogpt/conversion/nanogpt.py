"""nanoGPT checkpoints (ckpt.pt) <-> hf_nanogpt model folders.

nanoGPT's state dict *is* our state dict (same module tree, same names), so the conversion is mostly
checking: the key map below only removes what wrappers add (torch.compile, DDP) and the causal-mask
buffers older nanoGPT versions saved. Everything else in a ckpt.pt (optimizer, iter_num, config) is
kept beside the model in nanogpt.json and in the model card, and comes back on export.

    convert_nanogpt("out-shakespeare-char", "shakespeare-char-hf")      # -> model folder
    export_nanogpt("shakespeare-char-hf", "out-roundtrip")              # -> ckpt.pt (+ meta.pkl)
"""

import gc
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.conversion.common import (
    DROPPED_KEYS,
    ConversionError,
    check_logits,
    load_for_export,
    probe_batch,
    require_writable_output,
)
from hf_nanogpt.model_card import GPT2_HUB_IDS, field_table, hub_datasets, model_shape, render_model_card
from hf_nanogpt.saving import atomic_output_dir, write_model_folder
from hf_nanogpt.tokenization import (
    char_tokenizer,
    char_vocab,
    gpt2_tokenizer,
    is_gpt2_vocab,
    load_tokenizer,
    read_meta_pkl,
    write_meta_pkl,
)

# nanoGPT GPTConfig fields stored as checkpoint["model_args"]
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
# prefixes wrappers put in front of every key: torch.compile's OptimizedModule, DDP / DataParallel
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
METADATA_FILE = "nanogpt.json"  # iter_num, best_val_loss and the training config of the source checkpoint
TRAINING_CONFIG_FILE = "training_config.json"  # what `hf-nanogpt train` writes into its model folder
TOKENIZER_DIR = "tokenizer"  # export nanogpt's copy of a tokenizer sample.py does not know (a trained BPE)

CheckpointError = ConversionError  # the name nanoGPT users will look for


# ---------------------------------------------------------------------------------------------------
# reading nanoGPT checkpoints


def find_checkpoint(src: str | os.PathLike) -> Path:
    """SRC is a ckpt.pt or an out_dir holding one."""
    path = Path(src)
    if path.is_dir():
        candidates = [path / "ckpt.pt", *sorted(path.glob("*.pt"))]
        path = next((c for c in candidates if c.is_file()), path / "ckpt.pt")
    if not path.is_file():
        raise CheckpointError(f"{src}: no nanoGPT checkpoint found (expected a ckpt.pt, or an out_dir holding one).")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load a ckpt.pt safely (weights_only) and memory-mapped, so tensors are read on demand."""
    path = Path(path)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for bad files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Is the file complete? Checkpoints are loaded with weights_only=True, so files holding "
            f"arbitrary Python objects are refused."
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected nanoGPT's checkpoint dict, found {type(ckpt).__name__}.")
    missing = [k for k in ("model", "model_args") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: missing {missing} (found keys {sorted(ckpt)}); is this a nanoGPT ckpt.pt?")
    return ckpt


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrapper prefixes and drop mask buffers: what is left has exactly our key names."""
    cleaned = {}
    for key, tensor in state_dict.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if not DROPPED_KEYS.search(name):
            cleaned[name] = tensor
    return cleaned


def config_from_model_args(model_args: dict, path: Path) -> NanoGPTConfig:
    missing = [k for k in MODEL_ARGS if k not in model_args and k != "dropout"]
    if missing:
        raise CheckpointError(f"{path}: model_args lacks {missing} (found {model_args}).")
    args = {k: model_args[k] for k in MODEL_ARGS if k in model_args}
    try:
        return NanoGPTConfig(**args, activation_function="gelu")  # nanoGPT's only activation: exact GELU
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid model_args {model_args}: {err}") from err


def expected_shapes(config: NanoGPTConfig) -> dict[str, torch.Size]:
    """Every key of our model's state dict with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in NanoGPTForCausalLM(config).state_dict().items()}


def check_state_dict(state_dict: dict, config: NanoGPTConfig, path: Path) -> dict:
    """Keys and shapes must be exactly what model_args describes; returns the dict with lm_head tied."""
    expected = expected_shapes(config)
    wte, head = state_dict.get("transformer.wte.weight"), state_dict.get("lm_head.weight")
    if wte is not None and head is None:
        state_dict = {**state_dict, "lm_head.weight": wte}
    elif wte is not None and head is not None and wte.data_ptr() != head.data_ptr() and not torch.equal(wte, head):
        raise CheckpointError(
            f"{path}: lm_head.weight differs from transformer.wte.weight; nanoGPT ties them and so does hf_nanogpt."
        )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the state dict does not match model_args {config.n_layer=} {config.bias=}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}."
        )
    wrong = [
        f"{k}: expected {tuple(s)}, found {tuple(state_dict[k].shape)}"
        for k, s in expected.items()
        if state_dict[k].shape != s
    ]
    if wrong:
        raise CheckpointError(f"{path}: shapes disagree with model_args: " + "; ".join(wrong[:8]))
    return state_dict


def read_nanogpt(src: str | os.PathLike) -> tuple[Path, dict, NanoGPTConfig, dict]:
    """A ckpt.pt or out_dir -> (checkpoint path, checkpoint dict, config, checked state dict)."""
    ckpt_path = find_checkpoint(src)
    ckpt = load_checkpoint(ckpt_path)
    config = config_from_model_args(ckpt["model_args"], ckpt_path)
    return ckpt_path, ckpt, config, check_state_dict(clean_state_dict(ckpt["model"]), config, ckpt_path)


def model_from_state_dict(state_dict: dict, config: NanoGPTConfig) -> NanoGPTForCausalLM:
    """Build the model around the checkpoint's own tensors (no copy: memory stays near one model)."""
    with torch.device("meta"):
        model = NanoGPTForCausalLM(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# tokenizer


def find_meta(ckpt_path: Path, dataset: str | None) -> Path | None:
    """Where nanoGPT's sample.py would find meta.pkl: beside the checkpoint, or data/<dataset>/ under the
    current folder or the nanoGPT checkout that holds the out_dir."""
    candidates = [ckpt_path.parent / "meta.pkl"]
    if dataset:
        candidates += [Path("data") / dataset / "meta.pkl", ckpt_path.parent.parent / "data" / dataset / "meta.pkl"]
    return next((c for c in candidates if c.is_file()), None)


def resolve_tokenizer(
    ckpt_path: Path, ckpt: dict, tokenizer: str | None, meta: str | None
) -> tuple[PreTrainedTokenizerBase, str]:
    """--meta, else --tokenizer, else a meta.pkl found as sample.py finds it, else GPT-2 BPE."""
    if meta is not None and tokenizer is not None:
        raise ValueError("Pass either --meta or --tokenizer, not both.")
    if meta is not None:
        return char_tokenizer(read_meta_pkl(meta)["stoi"]), f"char level from {meta}"
    if tokenizer is not None:
        return load_tokenizer(tokenizer), f"{tokenizer}"
    found = find_meta(ckpt_path, (ckpt.get("config") or {}).get("dataset"))
    if found is not None:
        return char_tokenizer(read_meta_pkl(found)["stoi"]), f"char level from {found}"
    return gpt2_tokenizer(), "GPT-2 BPE (no meta.pkl found)"


# ---------------------------------------------------------------------------------------------------
# nanoGPT -> Hugging Face


@dataclass
class ConversionResult:
    out_dir: Path
    max_abs_diff: float
    tokenizer: str
    vocab_size: int
    num_parameters: int


def reload_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """Logits of `folder` reloaded through the Auto classes, as a user would load it."""
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return reloaded(ids).logits


def convert_nanogpt(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | None = None,
    meta: str | None = None,
    crop_vocab: bool = False,
    overwrite: bool = False,
    log=print,
) -> ConversionResult:
    """A nanoGPT ckpt.pt (or out_dir) -> a model folder that from_pretrained and pipeline() load.

    The folder is written beside `out_dir`, reloaded and checked against the source weights (logits
    within 1e-5), and only then renamed into place: on any failure nothing is written.
    """
    out_dir = require_writable_output(out_dir, overwrite, source=src)
    ckpt_path, ckpt, config, state_dict = read_nanogpt(src)
    tok, tok_desc = resolve_tokenizer(ckpt_path, ckpt, tokenizer, meta)

    n_tok = len(tok)
    if char_vocab(tok) is not None and n_tok != config.vocab_size:
        raise CheckpointError(
            f"{ckpt_path}: vocab_size {config.vocab_size} disagrees with the char-level vocabulary ({tok_desc}) of "
            f"{n_tok} characters: is this the meta.pkl of the data the model was trained on?"
        )
    if n_tok > config.vocab_size:
        raise CheckpointError(
            f"{ckpt_path}: the tokenizer ({tok_desc}) has {n_tok} tokens but the model only {config.vocab_size} "
            f"embeddings: pick the tokenizer the model was trained with."
        )
    if crop_vocab and n_tok < config.vocab_size:
        # nanoGPT pads GPT-2's 50257 to 50304 for speed; the padding rows were never trained
        for key in ("transformer.wte.weight", "lm_head.weight"):
            state_dict[key] = state_dict[key][:n_tok]
        config.vocab_size = n_tok

    model = model_from_state_dict(state_dict, config)
    n_params = model.num_parameters()
    info = {
        "source": str(ckpt_path),
        "iter_num": ckpt.get("iter_num"),
        "best_val_loss": float(ckpt["best_val_loss"]) if "best_val_loss" in ckpt else None,
        "model_args": ckpt["model_args"],
        "config": ckpt.get("config"),
        "cropped_vocab_to": n_tok if crop_vocab and n_tok < int(ckpt["model_args"]["vocab_size"]) else None,
    }
    card = nanogpt_model_card(info, config, tok_desc, out_dir.name, n_params)
    ids = probe_batch(config.block_size, min(n_tok, config.vocab_size))
    with torch.no_grad():
        reference_logits = model(ids).logits

    with atomic_output_dir(out_dir, overwrite=True) as tmp:  # OUT was checked above, before any work
        write_model_folder(
            model,
            tmp,
            tok,
            model_card=card,
            extra_files={METADATA_FILE: json.dumps(info, indent=2, default=str) + "\n"},
        )
        # Drop the source (memory-mapped checkpoint and the model on it) before reloading, so that
        # memory never holds two copies of the weights.
        del model, state_dict, ckpt
        gc.collect()
        diff = check_logits(reload_logits(tmp, ids), reference_logits, "written folder vs checkpoint", log)
    log(f"wrote {out_dir}: {n_params / 1e6:.2f}M parameters, vocab {config.vocab_size}, tokenizer {tok_desc}")
    return ConversionResult(out_dir, diff, tok_desc, config.vocab_size, n_params)


def nanogpt_model_card(info: dict, config: NanoGPTConfig, tok_desc: str, name: str, n_params: int) -> str:
    train_config = info.get("config") or {}
    dataset = train_config.get("dataset")
    best = info.get("best_val_loss")
    details = {
        "source checkpoint": f"`{Path(info['source']).name}` (nanoGPT)",
        "initialised from (init_from)": train_config.get("init_from") or "unknown",
        "iterations trained (iter_num)": info.get("iter_num"),
        "best validation loss": f"{best:.4f}" if best is not None else "unknown",
        "dataset": dataset or "unknown",
        "model_args": ", ".join(f"{k}={v}" for k, v in info["model_args"].items()),
        "tokenizer": tok_desc,
        "parameters": f"{n_params / 1e6:.2f}M",
    }
    if info.get("cropped_vocab_to"):
        details["vocabulary"] = f"cropped to the tokenizer's {info['cropped_vocab_to']} tokens"
    keep = (
        "batch_size",
        "block_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "max_iters",
        "weight_decay",
        "dropout",
        "dtype",
    )
    training = field_table({k: train_config[k] for k in keep if k in train_config}, "setting")
    return render_model_card(
        title=f"{name}: a nanoGPT model",
        summary=(
            f"A GPT trained with [nanoGPT](https://github.com/karpathy/nanoGPT) ("
            f"{model_shape(config.n_layer, config.n_head, config.n_embd, config.block_size)}), converted to "
            f"Hugging Face format by hf_nanogpt with logits checked against the source weights."
        ),
        sections={"Source": field_table(details), "Training settings": training or "unknown"},
        model_ref=name,
        base_model=GPT2_HUB_IDS.get(
            train_config.get("init_from")
        ),  # fine-tuned from GPT-2; else from scratch or unknown
        datasets=hub_datasets(dataset),
    )


# ---------------------------------------------------------------------------------------------------
# Hugging Face -> nanoGPT


def nanogpt_optimizer_state(
    model: NanoGPTForCausalLM, weight_decay: float, learning_rate: float, betas: tuple
) -> dict:
    """A fresh AdamW state_dict grouped as nanoGPT's configure_optimizers groups parameters (2-D and up
    decayed, the rest not), so that train.py's `optimizer.load_state_dict` accepts it on resume."""
    from hf_nanogpt.training.optim import nanogpt_param_groups

    return torch.optim.AdamW(nanogpt_param_groups(model, weight_decay), lr=learning_rate, betas=betas).state_dict()


def export_nanogpt(
    model_id: str | os.PathLike,
    out_dir: str | os.PathLike,
    dataset: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    log=print,
) -> Path:
    """A hf_nanogpt model folder (or Hub id) -> OUT_DIR/ckpt.pt in nanoGPT's format, plus meta.pkl for a
    char-level tokenizer, so that nanoGPT's sample.py and train.py (init_from='resume') run on it. A model
    trained with `--optimizer=muon` (its training_config.json says so) gets no optimizer entry: nanoGPT's
    train.py has AdamW only, so sample.py runs on it and train.py's resume does not.

    sample.py decodes with GPT-2's BPE (tiktoken) or a char-level meta.pkl only. A model with any other
    tokenizer (a BPE trained by `prepare --tokenizer bpe:VOCAB`) still gets its ckpt.pt, and its tokenizer
    in OUT_DIR/tokenizer/ (save_pretrained): sample.py would decode its ids as GPT-2's, wrong text, so
    decode them with AutoTokenizer.from_pretrained(OUT_DIR/tokenizer), or use `hf-nanogpt generate` on the
    model folder."""
    out_dir = require_writable_output(out_dir, overwrite, source=model_id)
    model, tokenizer = load_for_export(model_id, trust_remote_code)
    config = model.config
    if config.activation_function != "gelu":
        log(
            f"warning: {model_id} uses activation {config.activation_function!r}; nanoGPT's model.py always uses the "
            f"exact GELU, so its logits will differ slightly from this model's "
            f"(as with nanoGPT's own from_pretrained('gpt2'))."
        )
    if not math.isclose(config.layer_norm_epsilon, 1e-5):
        log(f"warning: layer_norm_epsilon {config.layer_norm_epsilon} differs from nanoGPT's fixed 1e-5.")

    info = read_metadata(model_id)
    train_config = dict(info.get("config") or {})
    optimizer = read_metadata(model_id, TRAINING_CONFIG_FILE).get("optimizer", "adamw")  # nanoGPT's own: AdamW
    if dataset is not None or "dataset" not in train_config:
        train_config["dataset"] = dataset or Path(out_dir).name
    ckpt = {
        "model": {k: v.contiguous() for k, v in model.state_dict().items()},  # lm_head and wte share storage
        **(
            {
                "optimizer": nanogpt_optimizer_state(
                    model,
                    train_config.get("weight_decay", 0.1),
                    train_config.get("learning_rate", 6e-4),
                    (train_config.get("beta1", 0.9), train_config.get("beta2", 0.95)),
                )
            }
            if optimizer == "adamw"
            else {}
        ),  # nanoGPT's train.py has AdamW only
        "model_args": {
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_embd": config.n_embd,
            "block_size": config.block_size,
            "bias": config.bias,
            "vocab_size": config.vocab_size,
            "dropout": float(config.dropout),
        },
        "iter_num": int(info.get("iter_num") or 0),
        "best_val_loss": torch.tensor(info["best_val_loss"] if info.get("best_val_loss") is not None else 1e9),
        "config": train_config,
    }
    stoi = char_vocab(tokenizer) if tokenizer is not None else None
    own_tokenizer = tokenizer is not None and stoi is None and not is_gpt2_vocab(tokenizer)  # sample.py knows neither
    with atomic_output_dir(out_dir, overwrite=True) as tmp:  # OUT was checked above, before any work
        torch.save(ckpt, tmp / "ckpt.pt")
        if stoi is not None:
            write_meta_pkl(tmp / "meta.pkl", stoi)
        elif own_tokenizer:
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    log(f"wrote {Path(out_dir) / 'ckpt.pt'} (iter_num {ckpt['iter_num']}, dataset {train_config['dataset']!r})")
    if "optimizer" not in ckpt:
        log(
            f"note: {model_id} was trained with optimizer={optimizer} ({TRAINING_CONFIG_FILE}) and nanoGPT's train.py "
            f"has AdamW only, so ckpt.pt has no optimizer entry: sample.py runs on it, train.py --init_from=resume "
            f"does not (it loads checkpoint['optimizer']); continue training with `hf-nanogpt train "
            f"--init_from={model_id} --optimizer={optimizer}`."
        )
    if stoi is not None:
        log(
            f"wrote {Path(out_dir) / 'meta.pkl'}: for nanoGPT's sample.py, copy it to "
            f"data/{train_config['dataset']}/meta.pkl in your nanoGPT checkout."
        )
    elif own_tokenizer:
        tokenizer_dir = Path(out_dir) / TOKENIZER_DIR
        log(f"wrote {tokenizer_dir}: the model's tokenizer ({len(tokenizer)} tokens; not GPT-2's BPE, not char level)")
        log(
            f"warning: nanoGPT's sample.py cannot decode this model's tokens: it knows only GPT-2's BPE (tiktoken) "
            f"and a char-level meta.pkl, and would decode these ids as GPT-2's, giving wrong text. Decode them with "
            f"AutoTokenizer.from_pretrained({str(tokenizer_dir)!r}), or sample with `hf-nanogpt generate {model_id} "
            f"--prompt ...` on the model folder."
        )
    elif tokenizer is None:
        log("warning: the model has no tokenizer; nanoGPT's sample.py will decode its ids as GPT-2 BPE.")
    return Path(out_dir)


def read_metadata(model_id: str | os.PathLike, filename: str = METADATA_FILE) -> dict:
    """nanogpt.json of a converted model (or another JSON file of a model folder: training_config.json of a
    trained one), from a local folder or Hub repo, or {} when there is none."""
    local = Path(model_id) / filename
    if local.is_file():
        return json.loads(local.read_text())
    if Path(model_id).exists():
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(model_id), filename)).read_text())
    except Exception:  # no such file in the repo, or offline: the metadata is optional
        return {}


__all__ = [
    "CheckpointError",
    "ConversionResult",
    "clean_state_dict",
    "convert_nanogpt",
    "export_nanogpt",
    "load_checkpoint",
    "nanogpt_optimizer_state",
]
