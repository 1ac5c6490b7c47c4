"""llm.c model files <-> hf_nanogpt.

The llm.c files read here are written by `write_llmc_file` below, re-done from llm.c's own writer
(train_gpt2.py write_model / write_tensors: a 256-int32 header, then the 16 tensors stacked over layers
in nn.Linear layout, wte padded with zero rows to a multiple of 128) from a transformers GPT2LMHeadModel,
so neither the files nor the reference logits come from the code under test. With LLMC=path/to/llm.c
set, one more test compiles llm.c's train_gpt2.c and runs its forward pass on a file we export.
"""

import json
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel
from transformers.convert_slow_tokenizer import bytes_to_unicode

from helpers import FIXTURES, tiny_model, trained_bpe
from hf_nanogpt import cli
from hf_nanogpt.conversion.common import ConversionError, probe_batch
from hf_nanogpt.conversion.llmc import (
    convert_llmc,
    export_llmc,
    llmc_token_table,
    read_llmc_tokenizer,
    write_llmc_tokenizer,
)
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import GPT2_BPE_DIR, char_tokenizer, gpt2_tokenizer

L, NH, C, MAX_T, V = 2, 4, 32, 64, 50257
VP = 50304  # llm.c's padding of 50257 to a multiple of 128
# train_gpt2.py write_tensors: after wte and wpe, each of these for every layer, then ln_f weight and bias
PER_LAYER = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # (in, out) in GPT-2


def write_llmc_file(path, gpt2: GPT2LMHeadModel, dtype: str = "float32") -> None:
    """llm.c's write_model for a GPT2LMHeadModel (nn.Linear layout: the Conv1D weights transposed)."""
    sd, cfg = gpt2.state_dict(), gpt2.config
    vocab = cfg.vocab_size
    padded = ((vocab + 127) // 128) * 128
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [
        20240326,
        {"float32": 3, "bfloat16": 5}[dtype],
        cfg.n_positions,
        vocab,
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        padded,
    ]
    tensors = [F.pad(sd["transformer.wte.weight"], (0, 0, 0, padded - vocab)), sd["transformer.wpe.weight"]]
    for name in PER_LAYER:
        for i in range(cfg.n_layer):
            t = sd[f"transformer.h.{i}.{name}"]
            tensors.append(t.t() if name in CONV1D else t)
    tensors += [sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tensors:
            t = t.detach().cpu().contiguous()
            f.write(
                t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
                if dtype == "bfloat16"
                else t.float().numpy().tobytes()
            )


def train_gpt2_c_check(path) -> dict:
    """What train_gpt2.c's gpt2_build_from_checkpoint checks and reads, as it does: magic, version 3, the
    header fields, and fill_in_parameter_sizes' count of floats after the 1024-byte header."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240326, "Bad magic model file"
    assert header[1] == 3, "Bad version in model file"
    maxT, vocab, layers, heads, channels, padded = (int(x) for x in header[2:8])
    assert not header[8:].any()
    sizes = (
        [padded * channels, maxT * channels]
        + [
            layers * s
            for s in (
                channels,
                channels,
                3 * channels * channels,
                3 * channels,
                channels * channels,
                channels,
                channels,
                channels,
                4 * channels * channels,
                4 * channels,
                channels * 4 * channels,
                channels,
            )
        ]
        + [channels, channels]
    )
    assert os.path.getsize(path) == 1024 + 4 * sum(sizes)
    return {
        "maxT": maxT,
        "V": vocab,
        "L": layers,
        "NH": heads,
        "C": channels,
        "Vp": padded,
        "num_parameters": sum(sizes),
    }


def make_gpt2(seed=0, vocab_size=V) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=L, n_head=NH, n_embd=C, n_positions=MAX_T, vocab_size=vocab_size)
    return GPT2LMHeadModel(config).eval()


def bf16_rounded(model):
    for p in model.parameters():
        p.data.copy_(p.data.to(torch.bfloat16))
    return model


def probe(vocab=V):
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def llmc_file(tmp_path_factory):
    """(folder, an llm.c file of a GPT2LMHeadModel, that model, the file converted)."""
    root = tmp_path_factory.mktemp("llmc")
    gpt2 = make_gpt2()
    write_llmc_file(root / "gpt2.bin", gpt2)
    assert train_gpt2_c_check(root / "gpt2.bin")["Vp"] == VP  # the test's writer, checked as llm.c reads
    convert_llmc(root / "gpt2.bin", root / "converted")
    return root, root / "gpt2.bin", gpt2, root / "converted"


def test_convert_matches_gpt2lmheadmodel(llmc_file):
    _, _, gpt2, converted = llmc_file
    ours = AutoModelForCausalLM.from_pretrained(converted).eval()
    c = ours.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, c.bias) == (L, NH, C, MAX_T, VP, True)
    assert c.activation_function == "gelu_new" and c.layer_norm_epsilon == 1e-5
    ids = probe()
    with torch.no_grad():
        logits = ours(ids).logits
        assert (logits[..., :V] - gpt2(ids).logits).abs().max() <= 1e-5
    assert not ours.transformer.wte.weight[V:].any()  # the padding rows, zero as llm.c writes them, are kept
    prompt = torch.tensor([gpt2_tokenizer()("Hello, I'm a language model,").input_ids])
    assert torch.equal(
        ours.generate(prompt, max_new_tokens=20, do_sample=False),
        gpt2.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256),
    )


def test_padded_vocabulary_is_never_generated(llmc_file):
    _, _, _, converted = llmc_file
    gen = GenerationConfig.from_pretrained(converted)
    assert gen.suppress_tokens == list(range(V, VP)) and gen.max_length == MAX_T
    assert AutoTokenizer.from_pretrained(converted)("Hello world").input_ids == [15496, 995]  # bundled GPT-2 BPE
    ours = AutoModelForCausalLM.from_pretrained(converted)
    with torch.no_grad():
        ours.transformer.wte.weight[V:] = 10.0  # make the padding rows the likeliest tokens
    torch.manual_seed(0)
    out = ours.generate(torch.tensor([[15496]]), max_new_tokens=30)
    assert out.max() < V
    card = (converted / "README.md").read_text()
    assert "llm.c" in card and "gelu_new" in card and f"{V} tokens, {VP} rows" in card


def test_fp32_round_trip_is_byte_exact(llmc_file, tmp_path):
    _, src, _, converted = llmc_file
    logs = []
    export_llmc(converted, tmp_path / "again.bin", log=logs.append)
    assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()
    assert not any(line.startswith("warning") for line in logs)  # a gelu_new model exports silently
    assert any("verification" in line for line in logs)


def test_ours_to_llmc_to_ours_keeps_every_tensor(tmp_path):
    model = tiny_model(seed=3, vocab_size=VP, block_size=MAX_T, activation_function="gelu_new")  # bias=True
    save_model_folder(model, tmp_path / "src", gpt2_tokenizer())
    export_llmc(tmp_path / "src", tmp_path / "model.bin")
    read = train_gpt2_c_check(tmp_path / "model.bin")
    assert {k: read[k] for k in ("maxT", "V", "L", "NH", "C", "Vp")} == {
        "maxT": MAX_T,
        "V": V,
        "L": 2,
        "NH": 4,
        "C": 32,
        "Vp": VP,
    }
    assert read["num_parameters"] == model.num_parameters()  # tied lm_head counted once, as llm.c stores it
    convert_llmc(tmp_path / "model.bin", tmp_path / "back")
    before, after = (
        load_file(tmp_path / "src" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bias_false_exact_gelu_exports_with_zero_biases_and_a_warning(tmp_path):
    model = tiny_model(seed=4, vocab_size=VP, block_size=MAX_T, bias=False, activation_function="gelu")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # large pre-activations, so that exact and tanh GELU differ visibly
    save_model_folder(model, tmp_path / "src", gpt2_tokenizer())
    logs = []
    export_llmc(tmp_path / "src", tmp_path / "model.bin", log=logs.append)
    warning = next(line for line in logs if line.startswith("warning") and "exact GELU" in line)
    ids = probe_batch(MAX_T, V)  # the batch export_llmc measures on
    tanh_model = AutoModelForCausalLM.from_pretrained(tmp_path / "src", activation_function="gelu_new").eval()
    with torch.no_grad():
        measured = (model(ids).logits - tanh_model(ids).logits).abs().max().item()
    reported = float(re.search(r"max \|logits difference\| = (\S+)", warning).group(1))
    assert reported > 0 and reported == pytest.approx(measured, rel=1e-2)  # the same probe batch, the same figure

    convert_llmc(tmp_path / "model.bin", tmp_path / "back")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.config.bias is True and back.config.activation_function == "gelu_new"
    state = back.state_dict()
    biases = [k for k in state if k.endswith(".bias")]
    assert len(biases) == 6 * L + 1 and all(
        not state[k].any() for k in biases
    )  # 2 LayerNorms and 4 Linears a layer, ln_f
    for key, tensor in model.state_dict().items():
        assert torch.equal(state[key], tensor)
    with torch.no_grad():
        assert (back(ids).logits - tanh_model(ids).logits).abs().max() <= 1e-5 * max(
            1, tanh_model(ids).logits.abs().max()
        )


def test_bfloat16_both_ways(llmc_file, tmp_path):
    _, _, gpt2, converted = llmc_file
    write_llmc_file(tmp_path / "bf16.bin", gpt2, dtype="bfloat16")
    convert_llmc(tmp_path / "bf16.bin", tmp_path / "from_bf16")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "from_bf16").eval()
    assert ours.dtype == torch.float32  # bfloat16 read into float32, exactly
    rounded = bf16_rounded(make_gpt2())
    ids = probe()
    with torch.no_grad():
        assert (ours(ids).logits[..., :V] - rounded(ids).logits).abs().max() <= 1e-5
    # version 5 again from the bf16-read folder: the same bytes
    export_llmc(tmp_path / "from_bf16", tmp_path / "again_bf16.bin", dtype="bfloat16")
    assert (tmp_path / "again_bf16.bin").read_bytes() == (tmp_path / "bf16.bin").read_bytes()
    # and from the float32 folder: rounded once, to the same bytes llm.c's write_bf16 gives
    assert cli.main(["export", "llmc", str(converted), str(tmp_path / "rounded.bin"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "rounded.bin").read_bytes() == (tmp_path / "bf16.bin").read_bytes()


def test_char_model_padded_to_128(tmp_path):
    chars = sorted(set("hello world, ROMEO:"))
    model = tiny_model(seed=5, vocab_size=len(chars), block_size=MAX_T, activation_function="gelu_new")
    save_model_folder(model, tmp_path / "src", char_tokenizer(chars))
    (tmp_path / "char_tokenizer.bin").write_bytes(b"an earlier model's")
    logs = []
    export_llmc(tmp_path / "src", tmp_path / "char.bin", overwrite=True, log=logs.append)
    # no end-of-text token: no tokenizer file (and not an earlier one), and a note saying what llm.c does instead
    assert not (tmp_path / "char_tokenizer.bin").exists()
    note = next(line for line in logs if line.startswith("note: no llm.c tokenizer file"))
    assert "the tokenizer has no <|endoftext|>" in note and "prints the token ids of its samples instead of text" in (
        note
    )
    read = train_gpt2_c_check(tmp_path / "char.bin")
    assert (read["V"], read["Vp"]) == (len(chars), 128)
    wte = np.fromfile(tmp_path / "char.bin", dtype=np.float32, count=128 * C, offset=1024).reshape(128, C)
    assert (
        np.array_equal(wte[: len(chars)], model.transformer.wte.weight.detach().numpy())
        and not wte[len(chars) :].any()
    )

    with pytest.raises(ConversionError, match=r"V = 14 tokens, not GPT-2's 50257.*--tokenizer"):
        convert_llmc(tmp_path / "char.bin", tmp_path / "back")
    with pytest.raises(ConversionError, match=r"V = 14 tokens, but the tokenizer \(gpt2\) has 50257"):
        convert_llmc(tmp_path / "char.bin", tmp_path / "back", tokenizer="gpt2")
    assert not (tmp_path / "back").exists()
    convert_llmc(tmp_path / "char.bin", tmp_path / "back", tokenizer=str(tmp_path / "src"))
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert back.config.vocab_size == 128
    assert GenerationConfig.from_pretrained(tmp_path / "back").suppress_tokens == list(range(len(chars), 128))
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "back")("hello").input_ids == char_tokenizer(chars)("hello").input_ids
    )


# ---------------------------------------------------------------------------------------------------
# the tokenizer file beside the model file

# text that llm.c prints through the tokenizer file: accents, Devanagari, emoji, digits, code, spaces and newlines
MIXED = "Señor, ¿qué tal? नमस्ते दुनिया 🙂👍🏽 12345 67.89\ndef f(x):\n    return x  # two\n\n\n   end"


def llmc_gpt2_tokenizer_bin() -> bytes:
    """gpt2_tokenizer.bin as llm.c's train_gpt2.py write_tokenizer writes it (tiktoken's decode_bytes of each of
    GPT-2's 50257 ids, version 2, eot 50256), re-done here from OpenAI's encoder.json."""
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = json.loads((GPT2_BPE_DIR / "encoder.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(50257))
    parts = [struct.pack("<256i", 20240328, 2, 50257, 50256, *[0] * 252)]
    for token in sorted(vocab, key=vocab.get):
        token_bytes = bytes(to_byte[char] for char in token)
        parts.append(struct.pack("<B", len(token_bytes)) + token_bytes)
    return b"".join(parts)


def test_gpt2_tokenizer_file_is_llmcs_gpt2_tokenizer_bin(llmc_file, tmp_path):
    _, _, _, converted = llmc_file
    logs = []
    export_llmc(converted, tmp_path / "gpt2_124M.bin", log=logs.append)
    written = tmp_path / "gpt2_124M_tokenizer.bin"
    assert written.read_bytes() == llmc_gpt2_tokenizer_bin()
    line = next(line for line in logs if line.startswith(f"wrote {written}"))
    assert "50257 tokens, end of text 50256" in line and "open gpt2_tokenizer.bin in the folder they run in" in line
    tokens, eot = read_llmc_tokenizer(written)
    assert eot == 50256 and tokens[50256] == b"<|endoftext|>" and tokens[:2] == [b"!", b'"']
    ids = gpt2_tokenizer()(MIXED).input_ids
    assert b"".join(tokens[i] for i in ids) == MIXED.encode()  # what llm.c prints, token by token
    # convert llmc checks the tokenizer against the file beside the model
    convert_llmc(tmp_path / "gpt2_124M.bin", tmp_path / "back", log=logs.append)
    assert "checked against gpt2_124M_tokenizer.bin" in logs[-1]


SHAKESPEARE = FIXTURES / "shakespeare_char" / "input_head.txt"


def mixed_bpe():
    """A byte-level BPE of 500 tokens (<|endoftext|> = 0) trained on Shakespeare and MIXED: merges of multi-byte
    characters included."""
    return trained_bpe([SHAKESPEARE.read_text(), MIXED * 10], 500)


def test_trained_bpe_tokenizer_file(tmp_path):
    tokenizer = mixed_bpe()
    model = tiny_model(seed=7, vocab_size=512, block_size=MAX_T, activation_function="gelu_new")
    save_model_folder(model, tmp_path / "src", tokenizer)
    export_llmc(tmp_path / "src", tmp_path / "model.bin")
    assert train_gpt2_c_check(tmp_path / "model.bin")["V"] == 500
    tokens, eot = read_llmc_tokenizer(tmp_path / "model_tokenizer.bin")
    assert len(tokens) == 500 and eot == 0 and tokens[0] == b"<|endoftext|>"
    ids = tokenizer(MIXED).input_ids
    assert b"".join(tokens[i] for i in ids) == MIXED.encode()
    assert any(len(tokens[i]) > 1 and min(tokens[i]) >= 0x80 for i in ids)  # merged multi-byte characters
    header = np.fromfile(tmp_path / "model_tokenizer.bin", dtype="<i4", count=256)
    assert header[:4].tolist() == [20240328, 2, 500, 0] and not header[4:].any()

    logs = []
    convert_llmc(tmp_path / "model.bin", tmp_path / "back", tokenizer=str(tmp_path / "src"), log=logs.append)
    assert "checked against model_tokenizer.bin" in logs[-1]
    save_model_folder(tiny_model(vocab_size=512), tmp_path / "other", trained_bpe([SHAKESPEARE.read_text()], 500))
    with pytest.raises(ConversionError, match=r"is not the one in .*model_tokenizer.bin beside it \(500 tokens, end"):
        convert_llmc(tmp_path / "model.bin", tmp_path / "back2", tokenizer=str(tmp_path / "other"))


def test_tokenizers_llmc_cannot_hold(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def byte_level(vocab):
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")

    with pytest.raises(ConversionError, match="token 1 is 300 bytes long; llm.c's file holds tokens of 1 to 255"):
        llmc_token_table(byte_level({"<|endoftext|>": 0, "a" * 300: 1}))
    with pytest.raises(ConversionError, match=r"token 1 \('€'\) has characters outside the byte-level alphabet"):
        llmc_token_table(byte_level({"<|endoftext|>": 0, "€": 1}))
    with pytest.raises(ConversionError, match="no tokenizer"):
        llmc_token_table(None)

    words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "hello": 1, "[UNK]": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    save_model_folder(tiny_model(vocab_size=8), tmp_path / "words", PreTrainedTokenizerFast(tokenizer_object=words))
    logs = []
    export_llmc(tmp_path / "words", tmp_path / "words.bin", log=logs.append)  # the model file still
    assert (tmp_path / "words.bin").is_file() and not (tmp_path / "words_tokenizer.bin").exists()
    assert "neither a byte-level BPE nor char level, so its tokens have no fixed bytes" in logs[-1]


def test_tokenizer_file_needs_overwrite(llmc_file, tmp_path):
    _, _, _, converted = llmc_file
    (tmp_path / "m_tokenizer.bin").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="m_tokenizer.bin exists.*--overwrite"):
        export_llmc(converted, tmp_path / "m.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_tokenizer.bin"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d[:-1], r"header says 3 tokens .* found 2 whole tokens and 2 bytes after them: truncated"),
        (lambda d: d + b"x", r"found 3 whole tokens and 1 bytes after them"),
        (lambda d: d[:1024] + b"\0" + d[1024:], r"found 0 whole tokens and 13 bytes after them"),  # a zero length
        (lambda d: d[:4] + struct.pack("<i", 3) + d[8:], r"version 3 with 3 tokens, expected version 2"),
        (lambda d: d[:4] + struct.pack("<i", 1) + d[8:], r"version 1 with 3 tokens, expected .* GPT-2's 50257"),
        (lambda d: d[:12] + struct.pack("<i", 3) + d[16:], r"end-of-text id 3 is not one of its 3 tokens"),
        (lambda d: struct.pack("<i", 20240326) + d[4:], r"magic number 20240326.*this is an llm.c model file"),
    ],
    ids=["truncated", "extra-byte", "zero-length", "version-3", "version-1", "eot", "model-file"],
)
def test_bad_tokenizer_files_are_refused(tmp_path, edit, message):
    write_llmc_tokenizer(tmp_path / "t.bin", [b"<|endoftext|>"[:5], b"ab", "é".encode()], 0)
    tokens, eot = read_llmc_tokenizer(tmp_path / "t.bin")
    assert (tokens, eot) == ([b"<|end", b"ab", b"\xc3\xa9"], 0)
    (tmp_path / "t.bin").write_bytes(edit((tmp_path / "t.bin").read_bytes()))
    with pytest.raises(ConversionError, match=message):
        read_llmc_tokenizer(tmp_path / "t.bin")


def corrupt(tmp_path, src, edit) -> str:
    data = bytearray(src.read_bytes())
    data = edit(data)
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(data))
    return str(path)


def set_header(index, value):
    def edit(data):
        data[4 * index : 4 * index + 4] = np.int32(value).tobytes()
        return data

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (set_header(0, 12345), r"magic number 12345, expected 20240326"),
        (set_header(0, 20240327), r"llm.c state file"),
        (set_header(1, 4), r"version 4, expected 3 \(float32\) or 5 \(bfloat16\)"),
        (lambda d: d[:-100], r"truncated"),
        (lambda d: d[:500], r"shorter than the 1,024-byte header"),
        (lambda d: d + b"\0" * 8, r"8 bytes longer than its parameters"),
        (set_header(5, 5), r"C = 32 is not a multiple of the heads NH = 5"),
        (set_header(3, VP + 1), r"V = 50305 exceeds the padded rows Vp = 50304"),
    ],
    ids=["magic", "state-file", "version-4", "truncated", "no-header", "extra-bytes", "heads", "vocab"],
)
def test_bad_files_are_refused_and_nothing_is_written(llmc_file, tmp_path, edit, message):
    _, src, _, _ = llmc_file
    bad = corrupt(tmp_path, src, edit)
    with pytest.raises(ConversionError, match=message) as err:
        convert_llmc(bad, tmp_path / "out")
    assert "bad.bin" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]  # no OUT, no temporary folder


def test_export_refusals_leave_nothing(llmc_file, tmp_path, monkeypatch):
    _, src, _, converted = llmc_file
    with pytest.raises(ValueError, match="float32 \\(version 3\\) or bfloat16 \\(version 5\\)"):
        export_llmc(converted, tmp_path / "x.bin", dtype="float16")
    (tmp_path / "x.bin").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_llmc(converted, tmp_path / "x.bin")
    # a check that fails: nothing replaces x.bin, no temporary file stays
    import hf_nanogpt.conversion.llmc as llmc

    monkeypatch.setattr(llmc, "llmc_logits", lambda params, header, ids: torch.zeros(*ids.shape, header["Vp"]))
    with pytest.raises(ConversionError, match="conversion check failed"):
        export_llmc(converted, tmp_path / "x.bin", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"] and (tmp_path / "x.bin").read_bytes() == b"keep"


def test_cli_both_ways(llmc_file, tmp_path, capsys):
    _, src, gpt2, converted = llmc_file
    assert cli.main(["export", "llmc", str(converted), str(tmp_path / "gpt2_124M.bin")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "gpt2_124M.bin").read_bytes() == src.read_bytes()
    assert (
        cli.main(["convert", "llmc", str(tmp_path / "gpt2_124M.bin"), str(tmp_path / "hf"), "--tokenizer", "gpt2"])
        == 0
    )
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu_new"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", "llmc", str(tmp_path / "gpt2_124M.bin"), str(tmp_path / "hf")])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    (tmp_path / "bad.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", "llmc", str(tmp_path / "bad.bin"), str(tmp_path / "hf2")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "bad.bin" in err and "magic number 0" in err


# ---------------------------------------------------------------------------------------------------
# opt-in: llm.c's own C code loads and runs what we export

HARNESS = r"""
#define TESTING
#include "train_gpt2.c"
// load argv[1] as train_gpt2.c does, run gpt2_forward on the tokens argv[3:], write the logits (T, Vp) to argv[2]
int main(int argc, char **argv) {
    GPT2 model;
    gpt2_build_from_checkpoint(&model, argv[1]);
    int T = argc - 3;
    int *tokens = (int *)mallocCheck(T * sizeof(int));
    for (int t = 0; t < T; t++) { tokens[t] = atoi(argv[3 + t]); }
    gpt2_forward(&model, tokens, NULL, 1, T);
    FILE *out = fopenCheck(argv[2], "wb");
    fwriteCheck(model.acts.logits, sizeof(float), (size_t)T * model.config.padded_vocab_size, out);
    fcloseCheck(out);
    free(tokens);
    gpt2_free(&model);
    return 0;
}
"""


@pytest.mark.skipif(
    not os.environ.get("LLMC"), reason="set LLMC=path/to/llm.c (a checkout) to run llm.c's train_gpt2.c on an export"
)
def test_llmc_train_gpt2_c_runs_the_export(tmp_path):
    llmc = os.environ["LLMC"]
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        pytest.skip("no C compiler")
    (tmp_path / "harness.c").write_text(HARNESS)
    subprocess.run(
        [compiler, "-O2", "-I", llmc, str(tmp_path / "harness.c"), "-lm", "-o", str(tmp_path / "harness")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    model = tiny_model(seed=6, vocab_size=VP, block_size=MAX_T, activation_function="gelu_new")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # logits of a few units, not the near-zero ones of a fresh init
    save_model_folder(model, tmp_path / "src", gpt2_tokenizer())
    export_llmc(tmp_path / "src", tmp_path / "gpt2_124M.bin")
    ids = probe()[0, :16]
    subprocess.run(
        [
            str(tmp_path / "harness"),
            str(tmp_path / "gpt2_124M.bin"),
            str(tmp_path / "logits.bin"),
            *map(str, ids.tolist()),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    theirs = torch.from_numpy(np.fromfile(tmp_path / "logits.bin", dtype=np.float32).reshape(len(ids), VP))
    with torch.no_grad():
        ours = model(ids[None]).logits[0]
    diff = (theirs - ours).abs().max().item()
    print(
        f"llm.c train_gpt2.c vs hf_nanogpt: max |logits difference| = {diff:.3e} (max |logit| {ours.abs().max():.2f})"
    )
    assert diff <= 1e-4 * max(1.0, ours.abs().max().item())


TOKENIZER_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "llmc/tokenizer.h"
// read argv[1] with tokenizer_init as train_gpt2.c does; print V and the end-of-text id, then the bytes
// tokenizer_decode gives for each id argv[2:] (raw: safe_printf would leave out lone unprintable bytes)
int main(int argc, char **argv) {
    Tokenizer tokenizer;
    tokenizer_init(&tokenizer, argv[1]);
    if (!tokenizer.init_ok) { return 1; }
    printf("%u %d\n", tokenizer.vocab_size, tokenizer.eot_token);
    for (int i = 2; i < argc; i++) { fputs(tokenizer_decode(&tokenizer, (uint32_t)atoi(argv[i])), stdout); }
    tokenizer_free(&tokenizer);
    return 0;
}
"""


@pytest.mark.skipif(
    not os.environ.get("LLMC"), reason="set LLMC=path/to/llm.c (a checkout) to read our tokenizer file with its C code"
)
@pytest.mark.parametrize("kind", ["gpt2", "trained-bpe"])
def test_llmc_tokenizer_h_reads_the_tokenizer_file(tmp_path, kind):
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        pytest.skip("no C compiler")
    (tmp_path / "harness.c").write_text(TOKENIZER_HARNESS)
    harness = tmp_path / "harness"
    command = [compiler, "-O2", "-I", os.environ["LLMC"], str(tmp_path / "harness.c"), "-o", str(harness)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    if kind == "gpt2":
        tokenizer, eot = gpt2_tokenizer(), 50256
    else:
        tokenizer, eot = mixed_bpe(), 0
    save_model_folder(tiny_model(vocab_size=len(tokenizer), block_size=MAX_T), tmp_path / "src", tokenizer)
    export_llmc(tmp_path / "src", tmp_path / "model.bin", log=lambda *a: None)
    ids = tokenizer(MIXED).input_ids
    result = subprocess.run(
        [str(harness), str(tmp_path / "model_tokenizer.bin"), *map(str, ids)], capture_output=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"{len(tokenizer)} {eot}\n".encode() + MIXED.encode()
