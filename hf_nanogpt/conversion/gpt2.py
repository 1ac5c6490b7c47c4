"""OpenAI GPT-2 (transformers' GPT2LMHeadModel) <-> hf_nanogpt model folders.

The module trees are the same and so are the names; what differs is the layout of the four projection
weights: GPT-2 keeps OpenAI's TensorFlow-era `Conv1D`, a matmul whose weight is stored (in, out), where
nanoGPT uses nn.Linear, stored (out, in). Those four are transposed, nothing else changes. GPT-2's
tanh GELU comes along as activation_function "gelu_new" (nanoGPT's exact GELU would not match).

    convert_gpt2("path/to/gpt2", "gpt2-nanogpt")         # GPT2LMHeadModel folder (or Hub id) -> ours
    export_gpt2("gpt2-nanogpt", "gpt2-again")            # ours -> GPT2LMHeadModel folder, no custom code

Tensors are streamed one at a time from safetensors (or a memory-mapped pytorch_model.bin), so memory
stays near one copy of the model.
"""

import gc
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel

from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM
from hf_nanogpt.conversion.common import (
    DROPPED_KEYS,
    ConversionError,
    check_logits,
    load_for_export,
    probe_batch,
    require_writable_output,
)
from hf_nanogpt.conversion.nanogpt import expected_shapes, model_from_state_dict
from hf_nanogpt.model_card import GPT2_HUB_IDS, base_model_id, field_table, model_shape, render_model_card
from hf_nanogpt.saving import atomic_output_dir, generation_config_for, write_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer, has_gpt2_files

# Conv1D (in, out) in GPT-2 <-> nn.Linear (out, in) in nanoGPT: these weights are transposed both ways
TRANSPOSED = re.compile(r"\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# GPT2Config field -> NanoGPTConfig field. Activation names are shared: "gelu_new" (GPT-2's tanh GELU)
# and "gelu" (exact, nanoGPT's) mean the same function in transformers' GPT-2 and in our model.
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "n_positions": "block_size",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "n_embd",
    "resid_pdrop": "dropout",
    "activation_function": "activation_function",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
# GPT2Config fields that nanoGPT's architecture cannot express, with the value it needs
UNSUPPORTED = {
    "n_inner": None,  # MLP width other than 4 * n_embd
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_IDS_HELP = f"{', '.join(GPT2_HUB_IDS)} (or openai-community/...)"


# ---------------------------------------------------------------------------------------------------
# reading GPT-2 folders


def resolve_source(src: str | os.PathLike) -> Path:
    """A local GPT2LMHeadModel folder, or a Hub id downloaded (config, weights, tokenizer) to the cache."""
    path = Path(src)
    if path.is_dir():
        return path
    looks_like_hub_id = re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", str(src)) is not None and not path.exists()
    if not looks_like_hub_id:
        raise ConversionError(f"{src}: no such folder; expected a model folder or a Hub id ({HUB_IDS_HELP}).")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src), allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as err:  # offline, unknown repo, gated repo...
        raise ConversionError(
            f"Could not download {src!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Without network access, fetch the model elsewhere "
            f"(`hf download {src} --local-dir ./{Path(str(src)).name}`) "
            f"and pass the local folder: hf-nanogpt convert gpt2 ./{Path(str(src)).name} OUT"
        ) from err


def read_gpt2_config(folder: Path) -> GPT2Config:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{folder}: no config.json; expected a GPT2LMHeadModel folder (save_pretrained output).")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") != "gpt2":
        raise ConversionError(
            f"{config_file}: model_type is {raw.get('model_type')!r}, expected 'gpt2' (architectures "
            f"{raw.get('architectures')}). Only GPT-2 models convert to nanoGPT's architecture."
        )
    config = GPT2Config.from_dict(raw)
    unsupported = {k: getattr(config, k) for k, need in UNSUPPORTED.items() if getattr(config, k) != need}
    if unsupported:
        raise ConversionError(f"{config_file}: settings nanoGPT's architecture cannot express: {unsupported}.")
    return config


def iter_source_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time from safetensors (single or sharded) or pytorch_model.bin."""
    from safetensors import safe_open

    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise ConversionError(f"{folder}: no weights found; expected one of {list(WEIGHT_FILES)}.")
    name = present[0]
    if name.endswith(".index.json"):
        shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
    else:
        shards = [name]
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise ConversionError(f"{folder}: the index names {shard}, which is missing.")
        try:
            if shard.endswith(".safetensors"):
                with safe_open(path, framework="pt") as f:
                    keys = list(f.keys())
                for key in keys:
                    # reopened per tensor: pages of a mapping still open count as resident memory, so one
                    # long-lived mapping would hold a second copy of the whole file by the end
                    with safe_open(path, framework="pt") as f:
                        tensor = f.get_tensor(key)
                    yield key, tensor
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                yield from state.items()
        except ConversionError:
            raise
        except Exception as err:
            raise ConversionError(
                f"{path}: unreadable weights ({type(err).__name__}: {str(err).splitlines()[0]})."
            ) from err


def to_nanogpt_key(key: str) -> str | None:
    """GPT-2 key -> our key (None: not a weight). GPT2Model checkpoints, such as the Hub's original
    gpt2, lack the `transformer.` prefix."""
    if DROPPED_KEYS.search(key):
        return None
    if key != "lm_head.weight" and not key.startswith("transformer."):
        key = "transformer." + key
    return key


def nanogpt_config_from_gpt2(gpt2: GPT2Config) -> NanoGPTConfig:
    return NanoGPTConfig(bias=True, **{ours: getattr(gpt2, theirs) for theirs, ours in CONFIG_FIELDS.items()})


def load_converted_state_dict(folder: Path, config: NanoGPTConfig) -> dict[str, torch.Tensor]:
    """Stream, rename, transpose and check every tensor against the shapes `config` describes."""
    expected = expected_shapes(config)
    state_dict = {}
    for key, tensor in iter_source_tensors(folder):
        name = to_nanogpt_key(key)
        if name is None:
            continue
        if name not in expected:
            raise ConversionError(f"{folder}: unexpected weight {key!r}; is this a GPT2LMHeadModel checkpoint?")
        if TRANSPOSED.search(name):
            tensor = tensor.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)
        if tensor.shape != expected[name]:
            found = tuple(tensor.t().shape) if TRANSPOSED.search(name) else tuple(tensor.shape)
            raise ConversionError(
                f"{folder}: {key} has shape {found}, but config.json (n_embd={config.n_embd}, "
                f"n_layer={config.n_layer}, vocab_size={config.vocab_size}, n_positions={config.block_size}) needs "
                f"{tuple(expected[name].t().shape) if TRANSPOSED.search(name) else tuple(expected[name])}."
            )
        state_dict[name] = tensor
    head = state_dict.get("lm_head.weight")
    wte = state_dict.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ConversionError(
            f"{folder}: lm_head.weight differs from transformer.wte.weight; GPT-2 and nanoGPT tie them."
        )
    if wte is not None:
        state_dict["lm_head.weight"] = wte
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ConversionError(f"{folder}: missing weights {missing[:8]}{'...' if len(missing) > 8 else ''}.")
    return state_dict


def source_tokenizer(folder: Path, vocab_size: int):
    """The source's own tokenizer files, else the bundled GPT-2 BPE (which fits GPT-2's 50257 ids)."""
    if has_gpt2_files(folder):
        return gpt2_tokenizer(folder), f"GPT-2 BPE from {folder}"
    if (folder / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(folder)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok, f"tokenizer from {folder}"
    tok = gpt2_tokenizer()
    if vocab_size < len(tok):
        raise ConversionError(
            f"{folder}: no tokenizer files, and vocab_size {vocab_size} is smaller than GPT-2 BPE's {len(tok)}."
        )
    return tok, "GPT-2 BPE (bundled; the source has no tokenizer files)"


def carried_generation_config(folder: Path, model, tokenizer) -> GenerationConfig:
    """Our defaults (fits block_size, no undecodable ids) with the source's own settings on top."""
    gen = generation_config_for(model, tokenizer)
    if (folder / "generation_config.json").is_file():
        source = GenerationConfig.from_pretrained(folder).to_diff_dict()
        for key in ("max_length", "max_new_tokens", "transformers_version", "_from_model_config"):
            source.pop(key, None)
        gen.update(**source)
    return gen


# ---------------------------------------------------------------------------------------------------
# GPT-2 -> hf_nanogpt


def gpt2_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def nanogpt_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def gpt2_as_nanogpt(src: str | os.PathLike) -> tuple[NanoGPTForCausalLM, Path]:
    """A GPT2LMHeadModel folder or Hub id -> (our model holding its weights, the source folder)."""
    folder = resolve_source(src)
    gpt2_config = read_gpt2_config(folder)
    try:
        config = nanogpt_config_from_gpt2(gpt2_config)
    except ValueError as err:  # e.g. an activation nanoGPT's block does not have
        raise ConversionError(f"{folder / 'config.json'}: {err}") from err
    return model_from_state_dict(load_converted_state_dict(folder, config), config), folder


def convert_gpt2(src: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, log=print) -> Path:
    """A GPT2LMHeadModel folder or Hub id -> a hf_nanogpt model folder, checked against GPT2LMHeadModel.

    Written beside `out_dir` and renamed at the end; on any failure nothing is written.
    """
    out_dir = require_writable_output(out_dir, overwrite, source=src)
    model, folder = gpt2_as_nanogpt(src)
    config = model.config
    tokenizer, tok_desc = source_tokenizer(folder, config.vocab_size)
    n_params = model.num_parameters()
    ids = probe_batch(config.block_size, min(len(tokenizer), config.vocab_size))
    card = gpt2_model_card(str(src), config, tok_desc, out_dir.name, n_params)

    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        write_model_folder(model, tmp, tokenizer, carried_generation_config(folder, model, tokenizer), card)
        del model
        gc.collect()
        # one model in memory at a time: ours reloaded from disk, then the source through transformers
        ours = nanogpt_logits(tmp, ids)
        check_logits(ours, gpt2_logits(folder, ids), "written folder vs GPT2LMHeadModel", log)
    log(
        f"wrote {out_dir}: {n_params / 1e6:.2f}M parameters, "
        f"activation {config.activation_function}, tokenizer {tok_desc}"
    )
    return out_dir


def gpt2_model_card(src: str, config: NanoGPTConfig, tok_desc: str, name: str, n_params: int) -> str:
    details = {
        "source": f"`{src}` (GPT2LMHeadModel)",
        "shape": model_shape(config.n_layer, config.n_head, config.n_embd, config.block_size),
        "vocabulary": config.vocab_size,
        "activation": f"{config.activation_function} (GPT-2's tanh GELU)",
        "tokenizer": tok_desc,
        "parameters": f"{n_params / 1e6:.2f}M",
    }
    return render_model_card(
        title=f"{name}: GPT-2 in nanoGPT's architecture",
        summary=(
            "OpenAI's GPT-2 weights in hf_nanogpt's nanoGPT model (Conv1D weights transposed to nn.Linear), with "
            "logits checked against transformers' GPT2LMHeadModel. A starting point for nanoGPT-style fine-tuning."
        ),
        sections={"Source": field_table(details)},
        model_ref=name,
        base_model=base_model_id(src),
        prompt="Hello, I'm a language model,",
    )


# ---------------------------------------------------------------------------------------------------
# hf_nanogpt -> GPT-2


def gpt2_config_from_nanogpt(config: NanoGPTConfig) -> GPT2Config:
    return GPT2Config(
        **{theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()},  # a padded vocab is kept
        # what llama.cpp's convert_hf_to_gguf.py reads as the context length (Hub gpt2 has it)
        n_ctx=config.block_size,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )


def to_gpt2_state_dict(
    tensors: Iterator[tuple[str, torch.Tensor]], gpt2_config: GPT2Config
) -> dict[str, torch.Tensor]:
    """Our (name, tensor) stream in GPT-2's layout; bias=False models get zero biases (the same function)."""
    with torch.device("meta"):
        expected = GPT2LMHeadModel(gpt2_config).state_dict()
    state_dict, dtype = {}, torch.float32
    for key, tensor in tensors:
        if key not in expected:
            raise ConversionError(f"unexpected weight {key!r} in a nanogpt model folder.")
        state_dict[key] = tensor.t().contiguous() if TRANSPOSED.search(key) else tensor
        dtype = tensor.dtype
    state_dict.setdefault("lm_head.weight", state_dict.get("transformer.wte.weight"))  # tied, saved once
    for key, meta in expected.items():
        if key not in state_dict or state_dict[key] is None:
            if not key.endswith(".bias"):
                raise ConversionError(f"GPT-2 needs {key}, which the model folder does not have.")
            state_dict[key] = torch.zeros(meta.shape, dtype=dtype)  # bias=False: a zero bias adds nothing
        elif state_dict[key].shape != meta.shape:
            raise ConversionError(f"{key}: shape {tuple(state_dict[key].shape)}, GPT-2 needs {tuple(meta.shape)}.")
    return state_dict


def export_gpt2(
    model_id: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    log=print,
) -> Path:
    """A hf_nanogpt model folder (or Hub id) -> a GPT2LMHeadModel folder stock transformers loads with no
    custom code, checked against the source (logits within 1e-5). One model in memory at a time."""
    out_dir = require_writable_output(out_dir, overwrite, source=model_id)
    folder = resolve_source(model_id)
    model, tokenizer = load_for_export(folder, trust_remote_code)
    config, generation_config = model.config, model.generation_config
    ids = probe_batch(config.block_size, min(len(tokenizer) if tokenizer else config.vocab_size, config.vocab_size))
    with torch.no_grad():
        reference = model(ids).logits
    del model
    gc.collect()

    gpt2_config = gpt2_config_from_nanogpt(config)
    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(gpt2_config)
    gpt2.load_state_dict(to_gpt2_state_dict(iter_source_tensors(folder), gpt2_config), strict=True, assign=True)
    gpt2.tie_weights()
    gpt2.generation_config = generation_config
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        gpt2.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        del gpt2
        gc.collect()
        check_logits(gpt2_logits(tmp, ids), reference, "GPT2LMHeadModel from the written folder vs source", log)
    log(f"wrote {out_dir}: a GPT2LMHeadModel folder (model_type gpt2, no custom code)")
    return out_dir


__all__ = ["convert_gpt2", "export_gpt2", "gpt2_as_nanogpt", "to_gpt2_state_dict"]
