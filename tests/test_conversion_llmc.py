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
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel

from helpers import tiny_model
from hf_nanogpt import cli
from hf_nanogpt.conversion.common import ConversionError, probe_batch
from hf_nanogpt.conversion.llmc import convert_llmc, export_llmc
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import char_tokenizer, gpt2_tokenizer

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
    export_llmc(tmp_path / "src", tmp_path / "char.bin")
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
