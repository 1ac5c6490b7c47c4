"""Model folders are written atomically: a failure never leaves a half-written folder behind."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from helpers import tiny_model
from hf_nanogpt.saving import atomic_output_dir, save_model_folder
from hf_nanogpt.tokenization import char_tokenizer


def test_save_model_folder_contents(tmp_path, gpt2_tok):
    model = tiny_model(vocab_size=50304, block_size=64)
    out = save_model_folder(model, tmp_path / "m", gpt2_tok, model_card="# card\n")
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
            "modeling_nanogpt.py", "configuration_nanogpt.py"} <= names
    assert [p for p in os.listdir(tmp_path) if p != "m"] == []  # no temporary folders left
    gen = GenerationConfig.from_pretrained(out)
    assert gen.max_length == 64 and gen.max_new_tokens is None and gen.pad_token_id == 50256
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.eos_token_id == 50256 and loaded.config.pad_token_id == 50256
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world").input_ids == [15496, 995]
    assert tokenizer.model_max_length == 64  # block_size, not GPT-2's 1024


def test_char_tokenizer_gets_the_block_size_as_its_max_length(tmp_path):
    """Pipelines, Trainer and TRL truncate to model_max_length: a char vocabulary has none of its own (1e30)."""
    out = save_model_folder(tiny_model(vocab_size=3, block_size=16), tmp_path / "m", char_tokenizer("abc"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 16
    assert len(tokenizer("abc" * 10, truncation=True).input_ids) == 16


def test_existing_folder_needs_overwrite(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model_folder(tiny_model(), tmp_path / "m")
    assert os.listdir(tmp_path / "m") == ["keep.txt"]
    save_model_folder(tiny_model(), tmp_path / "m", overwrite=True)
    assert "keep.txt" not in os.listdir(tmp_path / "m") and "model.safetensors" in os.listdir(tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_failure_mid_write_leaves_previous_folder_intact(tmp_path, monkeypatch):
    first = tiny_model(seed=1)
    save_model_folder(first, tmp_path / "m")
    before = sorted(os.listdir(tmp_path / "m"))

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(first), "save_pretrained", explode)
    with pytest.raises(OSError, match="disk full"):
        save_model_folder(tiny_model(seed=2), tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m"] and sorted(os.listdir(tmp_path / "m")) == before
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(reloaded.transformer.wte.weight, first.transformer.wte.weight)


def test_atomic_output_dir_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "new") as tmp:
            (tmp / "half.bin").write_bytes(b"123")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
