"""transformers citizenship: Auto classes, safetensors save/load, remote code, device_map, Trainer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Trainer, TrainingArguments

from helpers import BLOCK_HF_NANOGPT, tiny_model
from hf_nanogpt import NanoGPTConfig, NanoGPTForCausalLM, NanoGPTModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(seed=11, bias=False)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    return model, folder


def test_save_writes_safetensors_code_and_auto_map(saved):
    model, folder = saved
    files = sorted(os.listdir(folder))
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "modeling_nanogpt.py",
        "configuration_nanogpt.py",
    } <= set(files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "nanogpt"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_nanogpt.NanoGPTConfig",
        "AutoModel": "modeling_nanogpt.NanoGPTModel",
        "AutoModelForCausalLM": "modeling_nanogpt.NanoGPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_nanogpt.NanoGPTForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_nanogpt.NanoGPTForTokenClassification",
        "AutoModelForQuestionAnswering": "modeling_nanogpt.NanoGPTForQuestionAnswering",
    }
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "transformer.h.0.attn.c_attn.weight" in keys
    assert "lm_head.weight" not in keys  # tied: stored once


def test_auto_classes_load_our_classes(saved):
    model, folder = saved
    assert type(AutoConfig.from_pretrained(folder)) is NanoGPTConfig
    lm = AutoModelForCausalLM.from_pretrained(folder)
    assert type(lm) is NanoGPTForCausalLM
    assert lm.lm_head.weight is lm.transformer.wte.weight
    base = AutoModel.from_pretrained(folder)
    assert type(base) is NanoGPTModel
    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, model(ids).logits)
        assert torch.equal(base(ids).last_hidden_state, model.transformer(ids).last_hidden_state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(lm.state_dict()[name], tensor), name


def test_from_config_and_dtype(saved):
    _, folder = saved
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert type(model) is NanoGPTForCausalLM
    bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert bf16.transformer.wte.weight.dtype == torch.bfloat16
    assert bf16(torch.randint(0, 96, (1, 8))).logits.dtype == torch.bfloat16


def test_resaving_a_loaded_model_keeps_remote_code(saved, tmp_path):
    _, folder = saved
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(tmp_path)
    assert (tmp_path / "modeling_nanogpt.py").is_file() and (tmp_path / "configuration_nanogpt.py").is_file()
    assert "AutoModelForCausalLM" in json.loads((tmp_path / "config.json").read_text())["auto_map"]


REMOTE_SCRIPT = BLOCK_HF_NANOGPT + textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    folder, ids_file, out_file = sys.argv[1:4]
    try:
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
        raise SystemExit("loading without trust_remote_code should have failed")
    except ValueError as err:
        assert "trust_remote_code" in str(err), err
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(base).__name__ == "NanoGPTModel" and type(config).__name__ == "NanoGPTConfig"
    ids = torch.load(ids_file)
    with torch.no_grad():
        logits = model(ids).logits
    tokens = model.generate(ids[:1, :5], max_new_tokens=10, do_sample=False)
    torch.save({"logits": logits, "tokens": tokens}, out_file)
    """
)


def test_remote_code_in_a_process_without_the_package(saved, tmp_path):
    model, folder = saved
    ids = torch.randint(0, 96, (2, 16))
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(remote["logits"], model(ids).logits)
    assert torch.equal(remote["tokens"], model.generate(ids[:1, :5], max_new_tokens=10, do_sample=False))


def test_device_map_auto(tmp_path):
    """device_map="auto": whole on one device, and split across CPU and disk offload at Block
    granularity (_no_split_modules) when memory is short, with identical outputs either way."""
    model = tiny_model(seed=13, n_layer=4)
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(0, 96, (2, 16))
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map="auto")
    split = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": 150_000}, offload_folder=str(tmp_path / "offload")
    )
    placement = split.hf_device_map
    assert {"cpu", "disk"} <= set(placement.values()), placement
    assert all(not k.startswith("transformer.h.") or k.count(".") == 2 for k in placement), placement  # whole Blocks
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(whole(ids).logits, expected)
        assert torch.equal(split(ids).logits, expected)
    assert torch.equal(
        split.generate(ids[:1, :4], max_new_tokens=6, do_sample=False),
        model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False),
    )


def test_trainer_run_lowers_the_loss(tmp_path):
    """A transformers Trainer trains the model from `labels` (shifted inside), with gradient accumulation."""
    torch.manual_seed(0)
    model = tiny_model(seed=12).train()
    # a learnable pattern: each row counts up modulo 96 from a random start
    starts = torch.randint(0, 96, (64,))
    data = [(torch.arange(32) + s) % 96 for s in starts]
    train = [{"input_ids": x, "labels": x} for x in data]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=40,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0], losses
    assert result.global_step == 40
    model.eval()
    x = data[0][None]
    with torch.no_grad():
        assert model(x, labels=x).loss.item() < 1.0
