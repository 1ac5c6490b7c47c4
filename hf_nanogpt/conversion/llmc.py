"""karpathy/llm.c model files (gpt2_124M.bin, model_00005000.bin, ...) <-> hf_nanogpt model folders.

llm.c trains the same GPT-2 as nanoGPT, in C and CUDA, and keeps a model in one flat file: a header of
256 int32 (magic, version, maxT, V, L, NH, C, Vp, then zeros), then its 16 parameter tensors in a fixed
order, each stacked over the layers, in nn.Linear's (out, in) layout, wte padded to Vp rows. So the
conversion is bookkeeping: offsets, no transposes. What llm.c fixes, and how it is carried:

- biases everywhere: converted models have bias=True; bias=False models export with zero biases (the
  same function);
- GPT-2's tanh GELU: converted models get activation "gelu_new"; exporting an exact-GELU ("gelu")
  model warns with the measured change of its logits;
- LayerNorm epsilon 1e-5; version 3 = float32 (what train_gpt2.c reads), 5 = bfloat16 (train_gpt2.cu);
- V, the real vocabulary (50257 for GPT-2), and Vp, the rows stored (a multiple of 128: 50304). All Vp
  rows are kept (vocab_size = Vp, as nanoGPT keeps 50304); ids >= V are never generated.

The tokenizer travels beside the model as llm.c's tokenizer file (train_gpt2.py write_tokenizer,
llmc/tokenizer.h): a header (magic 20240328, version 2, V, the end-of-text id), then each token's bytes
after a one-byte length. export llmc writes it as OUT's stem + "_tokenizer.bin" (gpt2_124M.bin ->
gpt2_124M_tokenizer.bin); llm.c's train_gpt2.c / .cu open gpt2_tokenizer.bin in the folder they run in,
and print token ids instead of text without one. A tokenizer with no <|endoftext|> (char level) or a token
that is not 1 to 255 bytes gets no file, with a note; convert llmc checks the tokenizer it is given
against such a file beside its input.

bfloat16 files are read into float32 (exact: every bfloat16 is a float32), so the folder loads and
computes as any other; exporting it again as bfloat16 gives the same bytes.

    convert_llmc("gpt2_124M.bin", "gpt2-llmc")                                # -> model folder
    export_llmc("gpt2-llmc", "gpt2_124M.bin")                 # -> version 3 (float32), gpt2_124M_tokenizer.bin
    export_llmc("gpt2-llmc", "gpt2_124M_bf16.bin", dtype="bfloat16")          # -> version 5

Tensors are read and written one at a time (np.fromfile at their offsets), so memory stays near one
copy of the model.
"""

import gc
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_nanogpt import NanoGPTConfig
from hf_nanogpt.conversion.common import (
    ConversionError,
    atomic_output_file,
    check_logits,
    exact_gelu_warning,
    load_for_export,
    logits_change,
    probe_batch,
    require_writable_file,
    require_writable_output,
    use_tanh_gelu,
)
from hf_nanogpt.conversion.nanogpt import model_from_state_dict, reload_logits
from hf_nanogpt.data import shards
from hf_nanogpt.model_card import field_table, model_shape, render_model_card
from hf_nanogpt.saving import atomic_output_dir, write_model_folder
from hf_nanogpt.tokenization import eot_id, gpt2_tokenizer, load_tokenizer, token_bytes

MAGIC = 20240326  # llm.c model files (train_gpt2.py write_model, gpt2_build_from_checkpoint)
TOKENIZER_MAGIC = 20240328  # llm.c tokenizer files (train_gpt2.py write_tokenizer, tokenizer.h tokenizer_init)
TOKENIZER_VERSION = 2  # header: magic, version, V, end-of-text id (version 1 had no id: GPT-2's 50256)
LLMC_TOKENIZER_NAME = "gpt2_tokenizer.bin"  # what train_gpt2.c / train_gpt2.cu open, in their working folder
HEADER_FIELDS = (
    "magic",
    "version",
    "maxT",
    "V",
    "L",
    "NH",
    "C",
    "Vp",
)  # of llm.c's 256-int32 header (data/shards.py); the parameters follow
VERSIONS = {3: "float32", 5: "bfloat16"}  # model-file versions with a padded vocabulary (llm.c reads only these)
FILE_DTYPES = {"float32": np.dtype("<f4"), "bfloat16": np.dtype("<i2")}  # bfloat16 travels as int16 bit patterns
VOCAB_MULTIPLE = 128  # llm.c pads the vocabulary to a multiple of 128 (pad_vocab in train_gpt2.py)
GPT2_VOCAB = 50257
LAYER_NORM_EPS = 1e-5  # fixed in llm.c's layernorm_forward

# llm.c's parameter tensors in file order (ParameterTensors and fill_in_parameter_sizes in train_gpt2.c):
# (llm.c name, our key, shape in header terms). Keys with "{i}" are stored stacked over the L layers,
# layer 0 first; 3C and 4C are 3 * C and 4 * C. Weights are (out, in) in both, so nothing is transposed.
PARAMETERS = (
    ("wte", "transformer.wte.weight", ("Vp", "C")),
    ("wpe", "transformer.wpe.weight", ("maxT", "C")),
    ("ln1w", "transformer.h.{i}.ln_1.weight", ("L", "C")),
    ("ln1b", "transformer.h.{i}.ln_1.bias", ("L", "C")),
    ("qkvw", "transformer.h.{i}.attn.c_attn.weight", ("L", "3C", "C")),
    ("qkvb", "transformer.h.{i}.attn.c_attn.bias", ("L", "3C")),
    ("attprojw", "transformer.h.{i}.attn.c_proj.weight", ("L", "C", "C")),
    ("attprojb", "transformer.h.{i}.attn.c_proj.bias", ("L", "C")),
    ("ln2w", "transformer.h.{i}.ln_2.weight", ("L", "C")),
    ("ln2b", "transformer.h.{i}.ln_2.bias", ("L", "C")),
    ("fcw", "transformer.h.{i}.mlp.c_fc.weight", ("L", "4C", "C")),
    ("fcb", "transformer.h.{i}.mlp.c_fc.bias", ("L", "4C")),
    ("fcprojw", "transformer.h.{i}.mlp.c_proj.weight", ("L", "C", "4C")),
    ("fcprojb", "transformer.h.{i}.mlp.c_proj.bias", ("L", "C")),
    ("lnfw", "transformer.ln_f.weight", ("C",)),
    ("lnfb", "transformer.ln_f.bias", ("C",)),
)
WTE = "transformer.wte.weight"


# ---------------------------------------------------------------------------------------------------
# the file layout


def layout(header: dict) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(llm.c name, our key, shape) of every tensor in file order; a stacked tensor as its L layer slices."""
    dims = {**header, "3C": 3 * header["C"], "4C": 4 * header["C"]}
    for name, key, spec in PARAMETERS:
        shape = tuple(dims[dim] for dim in spec)
        if "{i}" in key:
            for i in range(header["L"]):
                yield f"{name}[{i}]", key.format(i=i), shape[1:]
        else:
            yield name, key, shape


def num_parameters(header: dict) -> int:
    """What train_gpt2.c's gpt2_build_from_checkpoint reads after the header (wte counted with Vp rows)."""
    return sum(math.prod(shape) for _, _, shape in layout(header))


def expected_file_size(header: dict) -> int:
    return shards.HEADER_BYTES + num_parameters(header) * FILE_DTYPES[VERSIONS[header["version"]]].itemsize


def padded_vocab(n: int) -> int:
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def read_header(path: Path) -> dict:
    """The header fields, checked as llm.c's readers check them (magic, version 3 or 5) and further:
    sizes that fit together and a file size that is exactly the header plus the parameters."""
    redo = "Write it again (llm.c's train_gpt2.py, or `hf-nanogpt export llmc`)."
    ints, size = shards.read_header(path, [MAGIC], "an llm.c model file", redo, ConversionError)
    header = dict(zip(HEADER_FIELDS, ints))
    if header["version"] not in VERSIONS:
        raise ConversionError(
            f"{path}: version {header['version']}, expected 3 (float32) or 5 (bfloat16), the model-file versions "
            f"llm.c reads today. Re-export it with a current llm.c (train_gpt2.py write_model)."
        )
    for name in ("maxT", "V", "L", "NH", "C", "Vp"):
        if header[name] <= 0:
            raise ConversionError(
                f"{path}: header field {name} is {header[name]}, expected a positive integer. {redo}"
            )
    if header["C"] % header["NH"]:
        raise ConversionError(
            f"{path}: channels C = {header['C']} is not a multiple of the heads NH = {header['NH']}; "
            f"no GPT has that shape. {redo}"
        )
    if header["V"] > header["Vp"]:
        raise ConversionError(
            f"{path}: vocabulary V = {header['V']} exceeds the padded rows Vp = {header['Vp']}. {redo}"
        )
    says = (
        f"version {header['version']}, maxT {header['maxT']}, L {header['L']}, C {header['C']}, Vp {header['Vp']}: "
        f"{num_parameters(header):,} parameters"
    )
    shards.check_size(path, size, expected_file_size(header), says, "parameters", redo, ConversionError)
    return header


def read_llmc(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """An llm.c model file -> (header, float32 state dict in our key names), one tensor at a time."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file; expected an llm.c model file (e.g. gpt2_124M.bin).")
    header = read_header(path)
    dtype = FILE_DTYPES[VERSIONS[header["version"]]]
    state = {}
    with open(path, "rb") as f:
        f.seek(shards.HEADER_BYTES)
        for _, key, shape in layout(header):
            array = np.fromfile(f, dtype=dtype, count=math.prod(shape)).reshape(shape)
            tensor = torch.from_numpy(array)
            state[key] = tensor.view(torch.bfloat16).float() if dtype == FILE_DTYPES["bfloat16"] else tensor
    return header, state


def write_llmc(path: Path, header: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """The header, then every tensor of `layout(header)` as llm.c's train_gpt2.py writes them: missing
    biases (a bias=False model) as zeros, wte followed by zero rows up to Vp (pad_vocab)."""
    dtype = VERSIONS[header["version"]]
    with open(path, "wb") as f:
        f.write(shards.header_bytes(*(MAGIC if name == "magic" else header[name] for name in HEADER_FIELDS)))
        for name, key, shape in layout(header):
            tensor = state_dict.get(key)
            if tensor is None and key.endswith(".bias"):
                tensor = torch.zeros(shape)  # bias=False: a zero bias adds nothing
            if tensor is None:
                raise ConversionError(f"llm.c needs {key} (its {name}), which the model does not have.")
            pad_rows = shape[0] - tensor.shape[0] if key == WTE else 0
            if tuple(tensor.shape) != (shape[0] - pad_rows, *shape[1:]):
                raise ConversionError(
                    f"{key}: shape {tuple(tensor.shape)}, but llm.c's {name} needs {shape} by the header."
                )
            write_tensor(f, tensor, dtype)
            if pad_rows:
                write_tensor(f, torch.zeros(pad_rows, *shape[1:]), dtype)


def write_tensor(f, tensor: torch.Tensor, dtype: str) -> None:
    """llm.c's write_fp32 / write_bf16: float32, or bfloat16 (rounded to nearest even) as its bits."""
    tensor = tensor.detach().cpu().to(getattr(torch, dtype)).contiguous()
    array = tensor.view(torch.int16).numpy() if dtype == "bfloat16" else tensor.numpy()
    f.write(array.astype(FILE_DTYPES[dtype], copy=False).data)


# ---------------------------------------------------------------------------------------------------
# the tokenizer file


def tokenizer_file_for(model_file: Path) -> Path:
    """The tokenizer file beside an llm.c model file: gpt2_124M.bin -> gpt2_124M_tokenizer.bin."""
    return model_file.with_name(f"{model_file.stem}_tokenizer.bin")


def llmc_token_table(tokenizer) -> tuple[list[bytes], int]:
    """(each token's bytes, the end-of-text id): what llm.c's tokenizer file holds of `tokenizer`; a
    ConversionError saying why when it cannot hold this one."""
    if tokenizer is None:
        raise ConversionError("the model folder has no tokenizer")
    eot = eot_id(tokenizer)
    if eot is None:
        raise ConversionError(
            "the tokenizer has no <|endoftext|>, whose id the file must give (llm.c starts each sample from it)"
        )
    try:
        table = token_bytes(tokenizer)
    except ValueError as err:
        raise ConversionError(f"the tokenizer has no bytes for its tokens: {err}") from None
    bad = next((i for i, token in enumerate(table) if not 1 <= len(token) <= 255), None)
    if bad is not None:
        raise ConversionError(
            f"token {bad} is {len(table[bad])} bytes long; llm.c's file holds tokens of 1 to 255 bytes"
        )
    return table, eot


def write_llmc_tokenizer(path: Path, tokens: list[bytes], eot: int) -> None:
    """llm.c's tokenizer file, as train_gpt2.py's write_tokenizer writes it: the header (magic, version 2, V,
    eot), then each token as a uint8 length and its bytes."""
    with open(path, "wb") as f:
        f.write(shards.header_bytes(TOKENIZER_MAGIC, TOKENIZER_VERSION, len(tokens), eot))
        for token in tokens:
            f.write(bytes([len(token)]) + token)


def read_llmc_tokenizer(path: str | os.PathLike) -> tuple[list[bytes], int]:
    """An llm.c tokenizer file (version 1 or 2, as tokenizer.h's tokenizer_init reads them) -> (each token's
    bytes, the end-of-text id); checked further than llm.c does, to the last byte."""
    path = Path(path)
    redo = "Write it again (llm.c's train_gpt2.py, or `hf-nanogpt export llmc`)."
    ints, _ = shards.read_header(path, [TOKENIZER_MAGIC], "an llm.c tokenizer file", redo, ConversionError)
    version, n = ints[1], ints[2]
    if version not in (1, 2) or (version == 1 and n != GPT2_VOCAB):
        raise ConversionError(
            f"{path}: version {version} with {n} tokens, expected version 2, or version 1 with GPT-2's {GPT2_VOCAB} "
            f"(what tokenizer.h reads). {redo}"
        )
    eot = ints[3] if version == 2 else GPT2_VOCAB - 1
    if not 0 <= eot < n:
        raise ConversionError(f"{path}: end-of-text id {eot} is not one of its {n} tokens. {redo}")
    data, tokens, at = path.read_bytes()[shards.HEADER_BYTES :], [], 0
    while len(tokens) < n and at < len(data) and data[at] and at + 1 + data[at] <= len(data):
        tokens.append(data[at + 1 : at + 1 + data[at]])
        at += 1 + data[at]
    if len(tokens) < n or at != len(data):
        rest = f" and {len(data) - at:,} bytes after them" if at != len(data) else ""
        raise ConversionError(
            f"{path}: its header says {n} tokens of 1 to 255 bytes each after a length byte; found "
            f"{len(tokens)} whole tokens{rest}: truncated or corrupt. {redo}"
        )
    return tokens, eot


# ---------------------------------------------------------------------------------------------------
# llm.c's forward pass, the reference both directions are checked against


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def llmc_logits(params: dict[str, torch.Tensor], header: dict, ids: torch.Tensor) -> torch.Tensor:
    """llm.c's gpt2_forward (train_gpt2.c) in torch, on a file's tensors: written from llm.c's C code, not
    from our model, so that a folder is checked against what llm.c computes. Logits over all Vp rows."""
    C, NH = header["C"], header["NH"]
    B, T = ids.shape

    def layernorm(x, name):
        return F.layer_norm(x, (C,), params[f"{name}.weight"], params[f"{name}.bias"], eps=LAYER_NORM_EPS)

    def matmul(x, name):
        return F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = params[WTE][ids] + params["transformer.wpe.weight"][:T]  # encoder_forward
    for i in range(header["L"]):
        h = f"transformer.h.{i}"
        qkv = matmul(layernorm(x, f"{h}.ln_1"), f"{h}.attn.c_attn")
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1) / math.sqrt(C // NH)).masked_fill(~causal, float("-inf")).softmax(dim=-1)
        x = x + matmul((att @ v).transpose(1, 2).reshape(B, T, C), f"{h}.attn.c_proj")
        x = x + matmul(gelu_tanh(matmul(layernorm(x, f"{h}.ln_2"), f"{h}.mlp.c_fc")), f"{h}.mlp.c_proj")
    return layernorm(x, "transformer.ln_f") @ params[WTE].t()


# ---------------------------------------------------------------------------------------------------
# llm.c -> hf_nanogpt


def llmc_tokenizer(path: Path, V: int, spec: str | None):
    """--tokenizer (as `convert nanogpt` takes it), else GPT-2 BPE when V is GPT-2's 50257; it must have V tokens,
    and the tokens of the tokenizer file beside `path`, where there is one."""
    if spec is not None:
        tokenizer, desc = load_tokenizer(spec), str(spec)
    elif V == GPT2_VOCAB:
        tokenizer, desc = gpt2_tokenizer(), "GPT-2 BPE (bundled; V = 50257)"
    else:
        raise ConversionError(
            f"{path}: a vocabulary of V = {V} tokens, not GPT-2's {GPT2_VOCAB}: pass the tokenizer the model was "
            f"trained with, --tokenizer DIR (a saved tokenizer, or GPT-2 BPE files) "
            f"or --tokenizer meta.pkl (char level)."
        )
    if len(tokenizer) != V:
        raise ConversionError(
            f"{path}: the header says V = {V} tokens, but the tokenizer ({desc}) has {len(tokenizer)}: pass the "
            f"tokenizer the model was trained with (--tokenizer)."
        )
    tok_file = tokenizer_file_for(path)
    if tok_file.is_file():  # written by export llmc: the tokens' bytes, no merges, so a check and not a tokenizer
        tokens, eot = read_llmc_tokenizer(tok_file)
        try:
            ours = llmc_token_table(tokenizer)
        except ConversionError:
            ours = None
        if ours != (tokens, eot):
            raise ConversionError(
                f"{path}: the tokenizer ({desc}) is not the one in {tok_file} beside it ({len(tokens)} tokens, end of "
                f"text {eot}): pass the tokenizer the model was trained with (--tokenizer)."
            )
        desc += f", checked against {tok_file.name}"
    return tokenizer, desc


def convert_llmc(
    src_bin: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | None = None,
    overwrite: bool = False,
    log=print,
) -> Path:
    """An llm.c model file (version 3 or 5) -> a hf_nanogpt model folder, checked against llm.c's forward
    of the file's tensors (logits within 1e-5). Written beside `out_dir` and renamed at the end; on any
    failure nothing is written."""
    out_dir = require_writable_output(out_dir, overwrite, source=src_bin)
    src = Path(src_bin)
    header, state = read_llmc(src)
    tok, tok_desc = llmc_tokenizer(src, header["V"], tokenizer)
    config = NanoGPTConfig(
        vocab_size=header["Vp"],  # all rows kept; generation_config_for suppresses ids >= V
        block_size=header["maxT"],
        n_layer=header["L"],
        n_head=header["NH"],
        n_embd=header["C"],
        bias=True,
        activation_function="gelu_new",
        layer_norm_epsilon=LAYER_NORM_EPS,
    )
    ids = probe_batch(config.block_size, header["V"])  # llm.c asserts ids < V
    with torch.no_grad():
        reference = llmc_logits(state, header, ids)
    model = model_from_state_dict({**state, "lm_head.weight": state[WTE]}, config)
    n_params = model.num_parameters()
    card = llmc_model_card(src, header, tok_desc, out_dir.name, n_params)

    with atomic_output_dir(out_dir, overwrite=True) as tmp:  # OUT was checked above, before any work
        write_model_folder(model, tmp, tok, model_card=card)
        del model, state
        gc.collect()  # one copy of the weights at a time: the reloaded folder replaces the file's
        check_logits(reload_logits(tmp, ids), reference, "written folder vs llm.c's forward of the file", log)
    log(
        f"wrote {out_dir}: {n_params / 1e6:.2f}M parameters, vocab {header['V']} (padded to {header['Vp']}), "
        f"activation gelu_new, tokenizer {tok_desc}"
    )
    return out_dir


def llmc_model_card(src: Path, header: dict, tok_desc: str, name: str, n_params: int) -> str:
    details = {
        "source": f"`{src.name}` (llm.c model file, version {header['version']}, {VERSIONS[header['version']]})",
        "shape": model_shape(header["L"], header["NH"], header["C"], header["maxT"]),
        "vocabulary": (
            f"{header['V']} tokens, {header['Vp']} rows (llm.c's padding; ids >= {header['V']} are never generated)"
        ),
        "activation": "gelu_new (llm.c's tanh GELU)",
        "tokenizer": tok_desc,
        "parameters": f"{n_params / 1e6:.2f}M",
    }
    return render_model_card(
        title=f"{name}: an llm.c GPT-2",
        summary=(
            "A GPT-2 trained with [llm.c](https://github.com/karpathy/llm.c), in hf_nanogpt's nanoGPT model, with "
            "logits checked against llm.c's forward pass on the file's own tensors. `hf-nanogpt export llmc` "
            "writes it back as an llm.c model file."
        ),
        sections={"Source": field_table(details)},
        model_ref=name,
        prompt="Hello, I'm a language model," if header["V"] == GPT2_VOCAB else "ROMEO:",
    )


# ---------------------------------------------------------------------------------------------------
# hf_nanogpt -> llm.c


def llmc_reference_logits(model, ids: torch.Tensor, dtype: str, model_id, log=print) -> torch.Tensor:
    """Logits of the function llm.c will compute from the exported file: `model` with llm.c's fixed
    choices applied in place (tanh GELU, LayerNorm eps 1e-5, weights rounded to bfloat16 for version 5).
    Each change is logged with how far it moves the logits on the probe batch, so none is silent."""
    config = model.config

    def llmc_eps(model):
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = LAYER_NORM_EPS

    def round_to_bfloat16(model):
        for param in model.parameters():
            param.data.copy_(param.data.to(torch.bfloat16))

    changes = []
    if config.activation_function == "gelu":
        changes.append((exact_gelu_warning(model_id, "llm.c"), use_tanh_gelu))
    if not math.isclose(config.layer_norm_epsilon, LAYER_NORM_EPS):
        changes.append(
            (
                f"warning: {model_id} has layer_norm_epsilon {config.layer_norm_epsilon}; llm.c's is fixed at "
                f"{LAYER_NORM_EPS}",
                llmc_eps,
            )
        )
    if dtype == "bfloat16":
        changes.append(("bfloat16 (version 5): weights rounded once to bfloat16", round_to_bfloat16))
    with torch.no_grad():
        logits = model(ids).logits
    for message, change in changes:
        logits = logits_change(model, ids, change, message, log, logits)
    return logits


def export_llmc(
    model_id: str | os.PathLike,
    out_bin: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    log=print,
) -> Path:
    """A hf_nanogpt model folder (or Hub id) -> an llm.c model file (version 3 for float32, 5 for
    bfloat16) that llm.c's train_gpt2.c / train_gpt2.cu load, and beside it the tokenizer file
    (`tokenizer_file_for(out_bin)`) when llm.c's format can hold the tokenizer (else a note says why not).
    The written file is read back and llm.c's forward on it checked against the source (logits within 1e-5,
    after llm.c's fixed choices, each reported). Each file is written beside its name and renamed at the end."""
    version = {name: v for v, name in VERSIONS.items()}.get(dtype)
    if version is None:
        raise ValueError(f"dtype {dtype!r}: llm.c model files are float32 (version 3) or bfloat16 (version 5).")
    out_bin = require_writable_file(out_bin, overwrite, model_id, example="gpt2_124M.bin")
    tok_file = require_writable_file(tokenizer_file_for(out_bin), overwrite, model_id, example="gpt2_tokenizer.bin")
    model, tokenizer = load_for_export(model_id, trust_remote_code)
    config = model.config
    try:
        table, eot = llmc_token_table(tokenizer)
    except ConversionError as err:
        table, eot, no_table = None, None, err
    V = len(tokenizer) if tokenizer is not None else config.vocab_size
    if V > config.vocab_size:
        raise ConversionError(
            f"{model_id}: the tokenizer has {V} tokens but the model only {config.vocab_size} embeddings."
        )
    header = {
        "version": version,
        "maxT": config.block_size,
        "V": V,
        "L": config.n_layer,
        "NH": config.n_head,
        "C": config.n_embd,
        "Vp": padded_vocab(config.vocab_size),
    }
    ids = probe_batch(config.block_size, V)
    reference = llmc_reference_logits(model, ids, dtype, model_id, log)

    with atomic_output_file(out_bin) as tmp:
        write_llmc(tmp, header, model.state_dict())
        del model
        gc.collect()
        _, params = read_llmc(tmp)  # back as llm.c reads it, header and size checks included
        logits = llmc_logits(params, header, ids)[..., : reference.shape[-1]]  # the zero rows added give logits 0
        check_logits(logits, reference, "llm.c's forward of the written file vs source", log)
    log(
        f"wrote {out_bin}: llm.c version {version} ({dtype}), V {V} padded to Vp {header['Vp']}, "
        f"{header['L']} layers, {header['NH']} heads, {header['C']} dims, maxT {header['maxT']}"
    )
    if table is not None:
        with atomic_output_file(tok_file) as tmp:
            write_llmc_tokenizer(tmp, table, eot)
        log(
            f"wrote {tok_file}: llm.c tokenizer file (version {TOKENIZER_VERSION}, {len(table)} tokens, end of text "
            f"{eot}); llm.c's train_gpt2.c and train_gpt2.cu open {LLMC_TOKENIZER_NAME} in the folder they run in: "
            f"copy it there under that name for its samples to print as text"
        )
    else:
        tok_file.unlink(missing_ok=True)  # (--overwrite) not an earlier model's tokenizer beside this one
        log(
            f"note: no llm.c tokenizer file written: {no_table}. Without {LLMC_TOKENIZER_NAME} in its working "
            f"folder llm.c prints the token ids of its samples instead of text (remove a {LLMC_TOKENIZER_NAME} left "
            f"there: it would decode these ids as another vocabulary's); decode them with this model's tokenizer "
            f"(AutoTokenizer.from_pretrained on the model folder)."
        )
    return out_bin


__all__ = [
    "PARAMETERS",
    "convert_llmc",
    "export_llmc",
    "llmc_logits",
    "llmc_token_table",
    "read_header",
    "read_llmc",
    "read_llmc_tokenizer",
    "tokenizer_file_for",
    "write_llmc",
    "write_llmc_tokenizer",
]
