"""hf_nanogpt.cpu_decode: the CPU decode products equal F.linear, the choice is timed once per shape, only CPU
inference on a few rows takes it, and attaching it leaves the model file, the weights and saved folders alone."""

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary
from transformers import AutoModelForCausalLM

import hf_nanogpt
from helpers import tiny_model
from hf_nanogpt import cpu_decode as d
from hf_nanogpt import modeling_nanogpt
from hf_nanogpt.cpu_decode import DecodeLinear, attach_cpu_decode


@pytest.mark.parametrize("n_out", [12, 97])  # divisible by the row blocks, and not (a remainder)
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(1,), (1, 1), (3, 2), (8, 1)])
def test_every_decode_matmul_equals_linear(n_out, threads, bias, lead):
    torch.manual_seed(0)
    weight, b = torch.randn(n_out, 24), torch.randn(n_out) if bias else None
    x = torch.randn(*lead, 24)
    names = [name for name in d.DECODE_MATMULS if name != "one_row" or x.numel() == 24]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for name in names:
            got = d.DECODE_MATMULS[name](x, weight, b)
            assert got.shape == (*lead, n_out) and got.is_contiguous(), name
            torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5, msg=name)
    finally:
        torch.set_num_threads(previous)


def test_decode_matmul_is_timed_once_per_shape_and_kept_only_past_the_margin(monkeypatch):
    monkeypatch.setattr(d, "DECODE_CHOICE", {})
    monkeypatch.setattr(d, "onednn_available", lambda: True)
    timed = []
    seconds = {"linear": 1.0, "row_blocks": 0.95, "one_row": 0.5, "onednn_packed": 1.2}
    monkeypatch.setattr(
        d, "time_products", lambda products, *a: timed.extend(products) or {n: seconds[n] for n in products}
    )
    weight = torch.randn(40, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert d.decode_matmul(torch.randn(1, 1, 16), weight, None) == "one_row"  # 0.5 s against 1 s
        assert len(timed) == 4
        assert d.decode_matmul(torch.randn(1, 1, 16), weight, None) == "one_row" and len(timed) == 4  # kept
        # two rows: no matrix-vector product; row blocks at 0.95x are within the margin, so F.linear stays
        assert d.decode_matmul(torch.randn(2, 1, 16), weight, None) == "linear" and len(timed) == 7
        # row counts share a choice by bucket (1, 2, 3-4, 5-8, ...): 3 rows are timed, 4 rows take their choice
        assert d.decode_matmul(torch.randn(3, 16), weight, None) == "linear" and len(timed) == 10
        assert d.decode_matmul(torch.randn(4, 16), weight, None) == "linear" and len(timed) == 10
        torch.set_num_threads(1)  # a new key; one thread has no row blocks
        assert d.decode_matmul(torch.randn(1, 1, 16), weight, None) == "one_row" and len(timed) == 13
        assert "row_blocks" not in timed[10:]
        monkeypatch.setattr(d, "onednn_available", lambda: False)  # a torch without oneDNN: not a candidate
        assert d.decode_matmul(torch.randn(5, 16), weight, None) == "linear" and "onednn_packed" not in timed[13:]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not d.onednn_available(), reason="this torch has no oneDNN")
def test_onednn_weight_is_packed_once_remade_after_a_change_and_dropped_when_not_chosen(monkeypatch):
    monkeypatch.setattr(d, "PACKED", WeakIdKeyDictionary())
    weight, x = torch.randn(40, 16), torch.randn(3, 16)
    torch.testing.assert_close(d.onednn_packed(x, weight, None), F.linear(x, weight))
    packed = d.PACKED[weight][1]
    d.onednn_packed(x, weight, None)
    assert d.PACKED[weight][1] is packed  # made once
    with torch.no_grad():
        weight.mul_(2)  # an optimizer step, say
    torch.testing.assert_close(d.onednn_packed(x, weight, None), F.linear(x, weight))
    assert d.PACKED[weight][1] is not packed
    del weight, packed
    gc.collect()
    assert len(d.PACKED) == 0  # the copy goes with its parameter

    # timed and not chosen: the copy made to time it is not kept
    monkeypatch.setattr(d, "DECODE_CHOICE", {})

    def onednn_slower(products, x, w, b):
        products["onednn_packed"](x, w, b)  # packs, as timing it does
        return {name: 2.0 if name == "onednn_packed" else 1.0 for name in products}

    monkeypatch.setattr(d, "time_products", onednn_slower)
    weight = torch.randn(40, 16)
    assert d.decode_matmul(x, weight, None) == "linear" and weight not in d.PACKED


def test_a_product_that_fails_is_never_chosen():
    def fails(*args):
        raise RuntimeError("no kernel for this dtype")

    seconds = d.time_products({"linear": F.linear, "fails": fails}, torch.randn(1, 4), torch.randn(3, 4), None)
    assert seconds["fails"] == float("inf") and seconds["linear"] < 1


def test_time_products_times_each_in_turns():
    calls = []
    products = {name: (lambda name: lambda *a: calls.append(name))(name) for name in ("linear", "one_row")}
    seconds = d.time_products(products, torch.randn(1, 4), torch.randn(3, 4), None, rounds=3)
    assert calls == ["linear", "one_row"] * 4  # a warm-up round, then three timed
    assert set(seconds) == {"linear", "one_row"} and all(0 < s < 1 for s in seconds.values())


def test_decode_matmul_only_for_cpu_inference_on_few_rows(monkeypatch):
    chosen = []
    monkeypatch.setattr(d, "decode_matmul", lambda x, w, b: chosen.append(x.shape) or "one_row")
    layer = DecodeLinear(16, 40)
    x = torch.randn(1, 1, 16)
    layer(x)  # gradients on: nn.Linear's path, autograd as always
    assert chosen == []
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert chosen == [(1, 1, 16)]
        layer(torch.randn(4, d.FEW_ROWS, 16))  # a prompt: many rows
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        torch.compile(layer, backend="eager", fullgraph=True)(x)  # traced: F.linear
        assert chosen == [(1, 1, 16)]
        torch.testing.assert_close(
            layer.to(torch.bfloat16)(x.bfloat16()), F.linear(x.bfloat16(), layer.weight, layer.bias)
        )
        assert chosen == [(1, 1, 16), (1, 1, 16)]


def test_greedy_tokens_do_not_depend_on_the_decode_matmul(monkeypatch):
    model = attach_cpu_decode(tiny_model(seed=3))
    prompt = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(4))
    outputs = {}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for name in d.DECODE_MATMULS:
            monkeypatch.setattr(
                d, "decode_matmul", lambda x, w, b: name if name != "one_row" or x.numel() == w.shape[1] else "linear"
            )
            outputs[name] = model.generate(prompt, max_new_tokens=20, do_sample=False)
            outputs[name + ", one row"] = model.generate(prompt[:1], max_new_tokens=20, do_sample=False)
    finally:
        torch.set_num_threads(threads)
    for name in d.DECODE_MATMULS:
        assert torch.equal(outputs[name], outputs["linear"]), name
        assert torch.equal(outputs[name + ", one row"], outputs["linear, one row"]), name


def test_attaching_leaves_weights_and_saved_folder_alone(tmp_path):
    plain = tiny_model(seed=1)
    model = attach_cpu_decode(tiny_model(seed=1))
    linears = [name for name, module in plain.named_modules() if isinstance(module, nn.Linear)]
    assert linears and all(type(model.get_submodule(name)) is DecodeLinear for name in linears)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert model.transformer.h[0].mlp.c_proj.is_residual_projection
    assert list(model.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))

    plain.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "attached")
    for name in ("modeling_nanogpt.py", "configuration_nanogpt.py", "config.json"):
        assert (tmp_path / "attached" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    saved_code = "".join(p.read_text() for p in (tmp_path / "attached").glob("*.py"))
    assert "cpu_decode" not in saved_code and "DecodeLinear" not in saved_code
    assert sorted(p.name for p in (tmp_path / "attached").glob("*.py")) == [
        "configuration_nanogpt.py",
        "modeling_nanogpt.py",
    ]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "attached")
    assert type(reloaded.lm_head) is nn.Linear  # the loaded model is plain; attaching is the loader's choice


def test_the_model_file_is_plain():
    """The modeling file (also the Hub's remote code) neither times nor picks kernels: its Linears are nn.Linear."""
    source = open(modeling_nanogpt.__file__).read()
    for word in ("perf_counter", "import time", "cpu_decode", "get_num_threads", "DECODE"):
        assert word not in source, word
    model = hf_nanogpt.NanoGPTForCausalLM(tiny_model().config)
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
