"""What every command writes: never over its own source, and readable by others (the umask's modes)."""

import os
import shutil
import stat

import pytest
import torch

from helpers import FIXTURES, NANOGPT_FIXTURES, tiny_model
from hf_nanogpt import cli
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import char_tokenizer


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A nanoGPT out_dir (with meta.pkl and an input.txt beside it) and a model folder converted from it."""
    root = tmp_path_factory.mktemp("sources")
    ckpt = root / "out-char"
    shutil.copytree(NANOGPT_FIXTURES / "A_char_nobias", ckpt)
    shutil.copy(FIXTURES / "shakespeare_char" / "input_head.txt", ckpt / "input.txt")
    assert cli.main(["convert", "nanogpt", str(ckpt), str(root / "model")]) == 0
    return ckpt, root / "model"


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", [
    "convert nanogpt D D", "convert nanogpt D D/hf", "convert nanogpt D/ckpt.pt D",
    "export nanogpt M M", "export nanogpt M M/back", "convert gpt2 M M", "export gpt2 M M/gpt2",
    "prepare D/input.txt D", "prepare D D/data",
])
def test_an_output_over_its_source_is_refused_before_any_work(case, sources, capsys):
    """`hf-nanogpt convert nanogpt D D --overwrite` used to delete D's ckpt.pt and meta.pkl."""
    ckpt, model = sources
    argv = case.replace("D", str(ckpt)).replace("M", str(model)).split() + ["--overwrite"]
    before = {folder: snapshot(folder) for folder in (ckpt, model)}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    out, src = argv[-2], argv[-3]
    assert err.startswith("error: ") and out in err and src in err and "Traceback" not in err, err
    assert {folder: snapshot(folder) for folder in (ckpt, model)} == before  # nothing lost, nothing added
    assert not (ckpt / "hf").exists() and not (model / "back").exists()


def test_folders_and_files_get_the_modes_the_umask_gives(sources, tmp_path):
    """A private temporary folder renamed into place was 0700: other users and a cluster's jobs could not read it."""
    ckpt, model = sources
    old = os.umask(0o022)
    try:
        save_model_folder(tiny_model(vocab_size=3), tmp_path / "saved", char_tokenizer("abc"))
        commands = [
            ["convert", "nanogpt", str(ckpt), str(tmp_path / "converted")],
            ["export", "nanogpt", str(model), str(tmp_path / "exported")],
            ["export", "gpt2", str(model), str(tmp_path / "gpt2")],
            ["prepare", str(ckpt / "input.txt"), str(tmp_path / "data")],
            ["prepare", str(ckpt / "input.txt"), str(tmp_path / "bpe"), "--tokenizer", "bpe:300"],  # and tokenizer/
        ]
        for argv in commands:
            assert cli.main(argv) == 0
    finally:
        os.umask(old)
    for name in ("saved", "converted", "exported", "gpt2", "data", "bpe"):
        folder = tmp_path / name
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, name
        for path in folder.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    assert torch.load(tmp_path / "exported" / "ckpt.pt", weights_only=True)["model_args"]["vocab_size"] == 78
