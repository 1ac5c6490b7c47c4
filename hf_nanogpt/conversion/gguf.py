"""hf_nanogpt model folders -> GGUF files that llama.cpp runs, as its `gpt2` architecture.

nanoGPT is GPT-2's architecture, so the GGUF holds what llama.cpp's own convert_hf_to_gguf.py writes
for a GPT2LMHeadModel, straight from our folder (no GPT-2 folder in between), through llama.cpp's own
writer (the `gguf` package):

    export_gguf("out/demo", "demo.gguf")                 # float32: the same weights, bit for bit
    export_gguf("gpt2-nanogpt", "gpt2.gguf", outtype="f16")
    export_gguf("gpt2-nanogpt", "gpt2-q8_0.gguf", outtype="q8_0")   # also q5_0, q4_0

- Weights: nanoGPT's nn.Linear (out, in) layout is the one GGUF stores, so nothing is transposed (GPT-2's
  Conv1D is what convert_hf_to_gguf.py has to transpose). Names follow TENSOR_MAP.
- llama.cpp requires every GPT-2 bias: bias=False models get zero biases (the same function).
- The lm_head is tied to wte, so `output` is left out and llama.cpp reuses token_embd, as for GPT-2.
- Tokenizer, embedded: a byte-level BPE with GPT-2's pre-tokenizer, GPT-2's own or one trained on other
  text (`prepare --tokenizer bpe:VOCAB`, <|endoftext|> at id 0), as convert_hf_to_gguf.py's `_set_vocab_gpt2`
  writes it (tokens, merges, special ids, pre-tokenizer "gpt-2"), plus the end-of-text id (eot), which
  llama.cpp would otherwise find by the token's text; char-level vocabularies as llama.cpp's "rwkv" vocabulary
  type (a longest-match over byte strings, which for one-character tokens is exactly our char tokenizer,
  with no merges and no special tokens that a BPE vocabulary would add). A padded vocabulary (50304 rows
  for GPT-2's 50257 tokens) gets "[PAD{i}]" tokens of type UNUSED, so there is a token for every row.
- Types: --outtype is the type of the 2-D matmul weights (attn_qkv, attn_output, ffn_up, ffn_down, token_embd,
  output); norms, biases and position_embd stay float32, as convert_hf_to_gguf.py keeps them. q8_0, q5_0 and q4_0
  are quantized by gguf-py's own quantizer (gguf.quants, numpy ports of ggml's reference quantizers).
  convert_hf_to_gguf.py writes q8_0 itself; q5_0 and q4_0 are llama-quantize's, whose rule keeps the output
  matrix (token_embd when tied) at Q6_K, or Q8_0 where its rows do not split into Q6_K's 256-value blocks:
  gguf-py cannot write Q6_K, so it is Q8_0 here. A tensor whose rows do not split into the type's 32-value
  blocks is stored in f16, the fallback of both llama.cpp tools, with a note.
- llama.cpp's GPT-2 graph always computes the tanh GELU: an exact-GELU model ("gelu", nanoGPT's) gets a
  warning with how far that moves its logits on the probe batch.
"""

import math
import os
import re
from pathlib import Path

import torch

from hf_nanogpt.conversion.common import (
    ConversionError,
    atomic_output_file,
    exact_gelu_warning,
    load_for_export,
    logits_change,
    probe_batch,
    require_writable_file,
    use_tanh_gelu,
)
from hf_nanogpt.conversion.gpt2 import resolve_source
from hf_nanogpt.tokenization import char_vocab, eot_id, is_gpt2_bpe, is_gpt2_vocab

ARCH = "gpt2"  # llama.cpp's LLM_ARCH_GPT2
# our module -> llama.cpp's tensor (gguf-py's TENSOR_NAMES for MODEL_ARCH.GPT2); ".weight" and ".bias" follow
TENSOR_MAP = {
    "transformer.wte": "token_embd",
    "transformer.wpe": "position_embd",
    "transformer.h.{bid}.ln_1": "blk.{bid}.attn_norm",
    "transformer.h.{bid}.attn.c_attn": "blk.{bid}.attn_qkv",
    "transformer.h.{bid}.attn.c_proj": "blk.{bid}.attn_output",
    "transformer.h.{bid}.ln_2": "blk.{bid}.ffn_norm",
    "transformer.h.{bid}.mlp.c_fc": "blk.{bid}.ffn_up",
    "transformer.h.{bid}.mlp.c_proj": "blk.{bid}.ffn_down",
    "transformer.ln_f": "output_norm",
    "lm_head": "output",  # written only when not tied to wte
}
UNBIASED = {"token_embd", "position_embd", "output"}  # every other GPT-2 tensor has a bias llama.cpp requires
# --outtype -> (GGML type of the 2-D weights, llama.cpp's general.file_type)
OUTTYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
# the output matrix's type where it differs from --outtype's: llama-quantize's Q6_K for q5_0 and q4_0, which
# gguf-py cannot write, so Q8_0, llama-quantize's own choice where Q6_K's blocks do not fit the rows
OUTPUT_TYPES = {"q5_0": "Q8_0", "q4_0": "Q8_0"}
# tensors kept float32 whatever the outtype, as convert_hf_to_gguf.py keeps them: 1-D ones (norms,
# biases), and the position embedding
FLOAT32_ALWAYS = {"position_embd.weight"}
CHAR_PAD = "\\x00[PAD{i}]"  # an rwkv token starting with a NUL byte: no text can ever match it
SUPPORTED_TOKENIZERS = (
    "a byte-level BPE with GPT-2's pre-tokenizer (GPT-2's own or a trained one) or a char-level vocabulary "
    "(as from nanoGPT's meta.pkl)"
)


def import_gguf():
    try:
        import gguf
    except ImportError as err:
        raise ConversionError(
            'export gguf writes with llama.cpp\'s `gguf` package, which is not installed: '
            'pip install "hf-nanogpt[gguf]"'
        ) from err
    return gguf


# ---------------------------------------------------------------------------------------------------
# tensors


def tensor_names(n_layer: int) -> dict[str, str]:
    """TENSOR_MAP with the layer numbers filled in: our module -> GGUF tensor name (without .weight/.bias)."""
    names = {}
    for ours, theirs in TENSOR_MAP.items():
        for bid in range(n_layer) if "{bid}" in ours else [None]:
            names[ours.format(bid=bid)] = theirs.format(bid=bid)
    return names


def gguf_tensors(state_dict: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our state dict in llama.cpp's GPT-2 names; zero biases for bias=False, no `output` when tied."""
    tensors, used = {}, set()
    for ours, theirs in tensor_names(n_layer).items():
        weight = state_dict[f"{ours}.weight"]
        used.add(f"{ours}.weight")
        if theirs == "output" and torch.equal(weight, state_dict["transformer.wte.weight"]):
            continue  # tied: llama.cpp uses token_embd as the output matrix when `output` is absent
        tensors[f"{theirs}.weight"] = weight
        if theirs not in UNBIASED:
            bias = state_dict.get(f"{ours}.bias")
            used.add(f"{ours}.bias")
            tensors[f"{theirs}.bias"] = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        raise ConversionError(f"weights llama.cpp's GPT-2 has no place for: {unexpected[:8]}.")
    return tensors


def ggml_type(name: str, tensor: torch.Tensor, outtype: str, output_matrix: str, gguf):
    """The GGML type `name` is stored in: --outtype for 2-D weights (OUTPUT_TYPES for `output_matrix`, the
    output tensor or token_embd when tied), float32 for the rest, f16 where the rows do not split into the
    quantized type's blocks (ggml quantizes along a row: the last dimension, the `in` of nn.Linear's (out, in))."""
    if tensor.ndim == 1 or name in FLOAT32_ALWAYS:
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[OUTTYPES[outtype][0]]
    if name == output_matrix and outtype in OUTPUT_TYPES:
        qtype = gguf.GGMLQuantizationType[OUTPUT_TYPES[outtype]]
    if tensor.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


# ---------------------------------------------------------------------------------------------------
# tokenizer


def token_list(
    by_id: dict[int, str], vocab_size: int, pad: str, token_type, added=None
) -> tuple[list[str], list[int]]:
    """Tokens and token types for every embedding row, as convert_hf_to_gguf.py's get_vocab_base types
    them: added tokens (`added`: id -> special?) CONTROL if special else USER_DEFINED, the rest NORMAL,
    and rows no token uses `pad` (UNUSED)."""
    added = added or {}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(pad.format(i=i))
            types.append(token_type.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(
                token_type.NORMAL if i not in added else token_type.CONTROL if added[i] else token_type.USER_DEFINED
            )
    return tokens, types


def add_vocab(writer, tokenizer, folder: Path, vocab_size: int, gguf) -> str:
    """Embed the tokenizer; returns a description for the log."""
    if tokenizer is None:
        raise ConversionError(f"{folder}: no tokenizer; llama.cpp needs one inside the GGUF ({SUPPORTED_TOKENIZERS}).")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ConversionError(
            f"{folder}: the tokenizer has ids up to {max(vocab.values())}, the model only {vocab_size} embeddings."
        )
    by_id = {i: token for token, i in vocab.items()}
    n_pad = vocab_size - len(by_id)
    stoi = char_vocab(tokenizer)
    if stoi is not None:
        # rwkv token text is escaped as Python writes bytes ("\n" -> "\\n", "\\" -> "\\\\", non-ASCII -> "\\xc3\\xa9")
        escaped = {i: repr(ch.encode("utf-8"))[2:-1] for ch, i in stoi.items()}
        tokens, types = token_list(escaped, vocab_size, CHAR_PAD, gguf.TokenType)
        writer.add_tokenizer_model("rwkv")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        return f"char level as llama.cpp's rwkv vocabulary ({len(stoi)} characters, {n_pad} padding rows)"
    if not is_gpt2_bpe(tokenizer):
        raise ConversionError(
            f"{folder}: tokenizer {type(tokenizer).__name__} is neither a byte-level BPE with GPT-2's pre-tokenizer "
            f"nor char level; export gguf embeds {SUPPORTED_TOKENIZERS}."
        )
    added = {i: token.special for i, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = token_list(by_id, vocab_size, "[PAD{i}]", gguf.TokenType, added)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)  # merges, bos/eos/pad ids
    if not special_vocab.merges:
        raise ConversionError(
            f"{folder}: no BPE merges found in the tokenizer files; llama.cpp cannot tokenize without them."
        )
    special_vocab.add_to_gguf(writer, quiet=True)
    eot = eot_id(tokenizer)
    if eot is not None and "eot" not in special_vocab.special_token_ids:
        writer.add_eot_token_id(eot)
    kind = "GPT-2 BPE" if is_gpt2_vocab(tokenizer) else "trained byte-level BPE with GPT-2's pre-tokenizer"
    return f"{kind} ({len(by_id)} tokens, {len(special_vocab.merges)} merges, end of text {eot}, {n_pad} padding rows)"


# ---------------------------------------------------------------------------------------------------
# hf_nanogpt -> GGUF


def gguf_writer_for(model, tokenizer, folder: Path, name: str, outtype: str, gguf):
    """A GGUFWriter holding the model's tensors and metadata, as convert_hf_to_gguf.py's GPT2Model writes
    them; also {GGML type: tensor names} and the tokenizer's description, for the log."""
    config = model.config
    writer = gguf.GGUFWriter(None, ARCH)
    types = {}
    tensors = gguf_tensors(model.state_dict(), config.n_layer)
    output_matrix = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    for tensor_name, tensor in tensors.items():
        qtype = ggml_type(tensor_name, tensor, outtype, output_matrix, gguf)
        writer.add_tensor(tensor_name, gguf.quants.quantize(tensor.detach().float().numpy(), qtype), raw_dtype=qtype)
        types.setdefault(qtype.name, []).append(tensor_name)
    # name, size label, model card tags and sampling defaults (generation_config.json), read as
    # convert_hf_to_gguf.py does
    metadata = gguf.Metadata.load(None, folder, name, writer.get_total_parameter_count()[0])
    metadata.size_label = metadata.size_label or gguf.size_label(*writer.get_total_parameter_count())
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(gguf.LlamaFileType[OUTTYPES[outtype][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tok_desc = add_vocab(writer, tokenizer, folder, config.vocab_size, gguf)
    return writer, types, tok_desc


def export_gguf(
    model_id: str | os.PathLike,
    out_file: str | os.PathLike,
    outtype: str = "f32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    log=print,
) -> Path:
    """A hf_nanogpt model folder (or Hub id) -> one GGUF file for llama.cpp (architecture gpt2, tokenizer
    embedded). outtype (f32, f16, bf16, q8_0, q5_0 or q4_0) is the type of the 2-D weights; norms, biases and
    position_embd stay float32 (the module docstring has the exceptions). Written beside `out_file` and renamed
    at the end."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}.")
    gguf = import_gguf()
    out_file = require_writable_file(out_file, overwrite, model_id, example="model.gguf")
    folder = resolve_source(model_id)
    model, tokenizer = load_for_export(folder, trust_remote_code)
    config = model.config

    name = Path(str(model_id)).name or folder.resolve().name
    writer, types, tok_desc = gguf_writer_for(model, tokenizer, folder, name, outtype, gguf)
    if config.activation_function == "gelu":
        ids = probe_batch(config.block_size, min(len(tokenizer), config.vocab_size))
        logits_change(model, ids, use_tanh_gelu, exact_gelu_warning(model_id, "llama.cpp's GPT-2 graph"), log)

    with atomic_output_file(out_file) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    log(
        f"wrote {out_file}: GGUF for llama.cpp (architecture {ARCH}), {config.n_layer} layers, {config.n_head} heads, "
        f"{config.n_embd} dims, context {config.block_size}; tokenizer {tok_desc}"
    )
    for qtype, members in sorted(types.items()):
        log(f"  {qtype}: {describe(members)}")
    wanted = OUTTYPES[outtype][0]
    if wanted not in ("F32", "F16") and types.get("F16"):
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted]][0]
        log(
            f"note: {describe(types['F16'])} stored in F16, not quantized: the length of their rows is not a multiple "
            f"of {wanted}'s block of {block} values (the fallback of llama.cpp's converter and llama-quantize)"
        )
    return out_file


def llama_cpp_perplexity(model, ids: torch.Tensor, n_ctx: int) -> float:
    """`model`'s perplexity on the token ids `ids` (1-D) computed as llama.cpp's llama-perplexity computes
    its figure, to compare the two: consecutive chunks of n_ctx tokens, each scored on its second half
    only (positions n_ctx/2 .. n_ctx-2 predicting the next token), exp of the mean negative log-likelihood."""
    n_chunk, first = len(ids) // n_ctx, n_ctx // 2
    if n_chunk < 2:
        raise ValueError(f"{len(ids)} tokens: llama-perplexity needs at least 2 * n_ctx = {2 * n_ctx}.")
    nll = 0.0
    with torch.no_grad():
        for chunk in ids[: n_chunk * n_ctx].view(n_chunk, n_ctx):
            logits = model(chunk[None]).logits[0, first:-1].double()
            nll += torch.nn.functional.cross_entropy(logits, chunk[first + 1 :], reduction="sum").item()
    return math.exp(nll / (n_chunk * (n_ctx - first - 1)))


def describe(names: list[str]) -> str:
    """A list of GGUF tensor names, layers folded: blk.0.attn_qkv.weight, blk.1.attn_qkv.weight ->
    blk.N.attn_qkv.weight."""
    return ", ".join(dict.fromkeys(re.sub(r"^blk\.\d+\.", "blk.N.", name) for name in names))


__all__ = ["TENSOR_MAP", "export_gguf", "llama_cpp_perplexity"]
