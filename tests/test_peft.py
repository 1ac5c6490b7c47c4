"""PEFT (LoRA) on our models with PEFT's own defaults: train, generate, merge, save and reload."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from helpers import tiny_model
from hf_nanogpt import NanoGPTForCausalLM
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

peft = pytest.importorskip("peft")
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model  # noqa: E402


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft") / "base"
    save_model_folder(tiny_model(seed=5, vocab_size=50304, block_size=64), folder, gpt2_tokenizer())
    return folder


@pytest.fixture(scope="module")
def trained(base_folder):
    """LoRA with PEFT's defaults (no target_modules), a few steps on one batch."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(task_type="CAUSAL_LM"))
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}
    ids = torch.randint(0, 50257, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), base, ids, losses


def test_lora_defaults_to_gpt2s_target_modules(trained):
    model, *_ = trained
    assert model.peft_config["default"].target_modules == {"c_attn"}
    lora_layers = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert lora_layers and all(name.endswith("attn.c_attn") for name in lora_layers)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_lora_trains_only_the_adapters(trained):
    model, base, _, losses = trained
    assert losses[-1] < losses[0] - 0.2, losses
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name


def test_merge_save_reload_identical(trained, tmp_path):
    model, _, ids, _ = trained
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    tokens = model.generate(input_ids=ids[:1, :4], max_new_tokens=8, do_sample=False)

    # the adapter alone, reloaded onto its base (which the adapter config names)
    model.save_pretrained(tmp_path / "adapter")
    for reloaded in (
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter"),
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model.peft_config["default"].base_model_name_or_path),
            tmp_path / "adapter",
        ),
    ):
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, adapted, atol=0, rtol=0)

    # merged into the weights: a plain model of ours again, whose Linear layers are nn.Linear
    merged = model.merge_and_unload()
    assert type(merged) is NanoGPTForCausalLM
    assert type(merged.transformer.h[0].attn.c_attn) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-5)
    save_model_folder(merged, tmp_path / "merged", gpt2_tokenizer())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, merged(ids).logits)
    assert torch.equal(again.generate(ids[:1, :4], max_new_tokens=8, do_sample=False), tokens)


def test_defaults_whichever_is_imported_first(tmp_path):
    """`import peft` before `import hf_nanogpt` gets the defaults too (this test process imports ours first)."""
    script = (
        "import peft, hf_nanogpt\n"
        "from peft import LoraConfig, get_peft_model\n"
        "from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM\n"
        "model = NanoGPTForCausalLM(NanoGPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))\n"
        "print(sorted(get_peft_model(model, LoraConfig()).peft_config['default'].target_modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['c_attn']"
