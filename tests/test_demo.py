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


def test_chat_demo_from_the_standard_library_to_a_chat_model(tmp_path, capsys):
    """python -m hf_nanogpt.chat_demo on a small budget: a BPE base model, the docstring conversations, the
    fine-tune, and the held-out report before and after."""
    import json

    from transformers import AutoTokenizer

    from hf_nanogpt import chat_demo
    from hf_nanogpt.chat import CHAT_TOKENS, has_chat_format

    root = tmp_path / "chat_demo"
    result = chat_demo.main([
        "--out_dir", str(root), "--max_chars", "300000", "--vocab", "400", "--n_layer", "1", "--n_head", "2",
        "--n_embd", "32", "--block_size", "128", "--batch_size", "4", "--pretrain_iters", "40",
        "--finetune_iters", "40", "--held_out", "6", "--max_new_tokens", "8",
    ])
    before, after = result["before"], result["after"]
    assert before["conversations"] == after["conversations"] > 0
    assert after["loss"] < before["loss"]  # fine-tuning taught the replies something
    assert all(0 <= report[key] <= 1 for report in (before, after) for key in ("ends_turn", "exact"))
    chat_dir = root / "chat"
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    assert has_chat_format(tokenizer) and (chat_dir / "chat_template.jinja").is_file()
    eos = json.loads((chat_dir / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [tokenizer.convert_tokens_to_ids(CHAT_TOKENS[1]), tokenizer.eos_token_id]
    assert json.loads((root / "data_chat" / "data_info.json").read_text())["chat"] is True
    printed = capsys.readouterr().out
    assert "ends its turn" in printed and "hf-nanogpt chat" in printed
