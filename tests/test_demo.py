"""The demo end to end on a small budget (`make demo` runs the full one)."""

import os

from transformers import AutoModelForCausalLM

from hf_nanogpt import demo


def test_stdlib_corpus_is_printable_python():
    text = demo.stdlib_corpus(50_000)
    assert len(text) == 50_000 and set(text) <= demo.PRINTABLE
    assert "def " in text and "import " in text


def test_demo_prepares_trains_saves_and_reloads(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    result = demo.main([
        "--out_dir", str(out_dir), "--data_dir", str(tmp_path / "data"), "--max_chars", "200000", "--max_iters", "60",
        "--eval_interval", "30", "--eval_iters", "5", "--n_layer", "2", "--n_embd", "64", "--warmup_iters", "10",
    ])
    history = result["history"]
    assert [h["iter"] for h in history] == [0, 30, 60]
    assert history[-1]["val"] < history[0]["val"] - 0.5  # it learned something
    assert abs(result["reloaded_val_loss"] - history[-1]["val"]) < 0.5  # the saved model is the trained one
    assert result["sample"].startswith("def ")
    assert {"train.bin", "val.bin", "meta.pkl"} <= set(os.listdir(tmp_path / "data"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "loss.png",
            "modeling_nanogpt.py"} <= set(os.listdir(out_dir))
    printed = capsys.readouterr().out
    assert "final loss" in printed and "def " in printed
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.n_layer == 2 and model.config.bias is False
