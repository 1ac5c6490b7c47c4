import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

from helpers import NANOGPT_FIXTURES, tiny_model
from hf_nanogpt import cli
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import char_tokenizer

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:.,\n"))


@pytest.fixture(scope="module")
def char_model_dir(tmp_path_factory):
    model = tiny_model(seed=20, vocab_size=len(CHARS), block_size=64)
    return save_model_folder(model, tmp_path_factory.mktemp("cli") / "model", char_tokenizer(CHARS)), model


def test_console_script_help():
    exe = shutil.which("hf-nanogpt", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the hf-nanogpt console script is not installed"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout
    result = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--prompt" in result.stdout and "--max-new-tokens" in result.stdout


def test_generate_streams_the_greedy_continuation(char_model_dir, capsys, monkeypatch):
    folder, model = char_model_dir
    chunks = []
    original = transformers.TextStreamer.on_finalized_text

    def record(self, text, stream_end=False):
        chunks.append(text)
        original(self, text, stream_end)

    monkeypatch.setattr(transformers.TextStreamer, "on_finalized_text", record)
    assert cli.main(["generate", str(folder), "--prompt", "ROMEO: hi", "--max-new-tokens", "40", "--greedy"]) == 0
    printed = capsys.readouterr().out
    tok = char_tokenizer(CHARS)
    ids = torch.tensor([tok("ROMEO: hi").input_ids])
    expected = tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0])
    assert printed.rstrip("\n") == expected.rstrip("\n")
    assert len([c for c in chunks if c]) > 1  # streamed piece by piece, not printed at the end


def test_generate_sampling_is_seeded(char_model_dir, capsys):
    folder, _ = char_model_dir
    args = ["generate", str(folder), "--prompt", "a", "--max-new-tokens", "30", "--seed", "3", "--temperature", "1.5"]
    cli.main(args)
    first = capsys.readouterr().out
    cli.main(args)
    assert capsys.readouterr().out == first


def test_generate_too_long_is_a_clear_error(char_model_dir, capsys):
    folder, _ = char_model_dir
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", str(folder), "--prompt", "abc", "--max-new-tokens", "100"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "block_size 64" in err and "at most 61" in err


def test_generate_missing_model_fails_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_nanogpt.cli", "generate", str(tmp_path / "nope"), "--prompt", "x"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_generate_sample_and_convert_print_no_deprecation_warnings(tmp_path):
    """What a user sees on the running transformers release: no FutureWarning or deprecation notice (5.24
    renamed the KV cache argument; the old name warns in every generate, sample and convert)."""
    exe = [sys.executable, "-m", "hf_nanogpt.cli"]
    folder = str(tmp_path / "model")
    commands = [
        ["convert", "nanogpt", str(NANOGPT_FIXTURES / "A_char_nobias"), folder],
        ["generate", folder, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--greedy"],
        ["sample", folder, "--start", "ROMEO:", "--num_samples", "1", "--max_new_tokens", "20"],
        ["sample", folder, "--start", "ROMEO:", "--num_samples", "1", "--max_new_tokens", "20", "--kv_cache"],
    ]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    for command in commands:
        result = subprocess.run(exe + command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        for word in ("FutureWarning", "DeprecationWarning", "deprecated", "past_key_values"):
            assert word not in output, (command, output[-3000:])


def test_generate_prompt_longer_than_the_block_is_a_clear_error(char_model_dir, capsys):
    folder, _ = char_model_dir  # block_size 64
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", str(folder), "--prompt", "a" * 70])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the prompt is 70 tokens, 7 more than the 63") and "cut it from the left" in err


@pytest.mark.parametrize("command", ["generate", "sample"])
def test_characters_outside_a_char_vocabulary_are_a_clear_error(char_model_dir, command, capsys):
    folder, _ = char_model_dir
    flag = "--prompt" if command == "generate" else "--start"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, str(folder), flag, "Señor €uro"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} has characters") and "'ñ€'" in err


def test_broken_folders_and_a_missing_gpu_are_clear_errors(char_model_dir, tmp_path, capsys):
    folder, _ = char_model_dir
    truncated, mismatched = tmp_path / "truncated", tmp_path / "mismatched"
    shutil.copytree(folder, truncated)
    shutil.copytree(folder, mismatched)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    cases = [
        (["generate", str(truncated), "--prompt", "a"], "could not be loaded"),
        (["generate", str(mismatched), "--prompt", "a"], "could not be loaded"),
        (["sample", str(truncated), "--start", "a"], "could not be loaded"),
    ]
    if not torch.cuda.is_available():
        cases += [(["generate", str(folder), "--prompt", "a", "--device", "cuda"], "no CUDA device"),
                  (["sample", str(folder), "--start", "a", "--device", "cuda"], "no CUDA device")]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, (argv, err)
