"""Every shell and Python block of README.md runs as written, top to bottom, as a reader would run them.

They run in one folder laid out as the README assumes: a nanoGPT out_dir (`out-shakespeare-char`, the
char-level fixture), a nanoGPT GPT-2 checkpoint (`out/ckpt.pt`, the BPE fixture), a GPT2LMHeadModel
folder (`./gpt2`), `input.txt`, and `out/demo`, each a tiny stand-in where the README means a big model
or a long run; every training run gets a tiny model and a few iterations (TINY) on top. Python blocks
share one namespace, as in a notebook; each shell line runs on its own (`hf-nanogpt` through its entry
point, `cli.main`, in this process, to spare a Python start-up per line). The Hub is the local test Hub,
where the token in HF_TOKEN belongs to `your-name`. A line that cannot run here is listed in NOT_RUN
with the reason; any other line that fails, fails this test.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, NANOGPT_FIXTURES, README_TOKEN, tiny_model
import hf_nanogpt.train
from hf_nanogpt import cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

NOT_RUN = {  # a piece of a line -> why it does not run here
    "make demo": "two minutes of training: tests/test_demo.py runs the demo",
    "make test": "it is the test suite this test is part of",
    "pip install": "it would install into the environment running the tests",
    "hf auth login": "it asks for a token interactively; here HF_TOKEN is set, the other way the line gives",
    "ddp_8gpu": "it needs 8 GPUs",
    "fsdp_cpu_2proc.yaml": "a full run of the preset; tests/test_distributed.py runs this line (the config's header) briefly",
    "multinode_cpu_2x1.yaml": "two machines: tests/test_distributed.py runs the two lines at once, briefly",
    "--tasks hellaswag": "lm-eval downloads the hellaswag and lambada data sets from the Hub (network); the local task below runs",
    "HuggingFaceFW/fineweb": "it streams FineWeb from the Hub (network); the world has shards in its place (data/fineweb10B)",
    "dev/data/fineweb.py": "llm.c's script, in an llm.c checkout, downloads FineWeb; the world has shards in its place",
}
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, max_iters=4, eval_interval=2, eval_iters=1,
            always_save_checkpoint=True, log_with="none", wandb_log=False, compile=False,
            gradient_accumulation_steps=1)  # what every training run of the README gets on top (gpt2_124m's wandb too)


def readme_blocks() -> list[tuple[int, str, str]]:
    """(line, language, text) of each ```bash and ```python block."""
    text = (ROOT / "README.md").read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder the README's commands run in, and the namespace its Python blocks share."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_nanogpt.data import write_shard
    from hf_nanogpt.saving import save_model_folder
    from hf_nanogpt.tokenization import char_tokenizer, gpt2_tokenizer

    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(NANOGPT_FIXTURES / "A_char_nobias", root / "out-shakespeare-char")  # ckpt.pt beside its meta.pkl
    (root / "out").mkdir()
    shutil.copy(NANOGPT_FIXTURES / "B_bpe_bias" / "ckpt.pt", root / "out" / "ckpt.pt")
    shutil.copy(FIXTURES / "shakespeare_char" / "input_head.txt", root / "input.txt")
    (root / "my_run.yaml").write_text("dataset: shakespeare_char\nout_dir: out-test\n")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(root / "gpt2")
    gpt2_tokenizer().save_pretrained(root / "gpt2")
    chars = sorted(set((root / "input.txt").read_text()) | set("def "))
    save_model_folder(tiny_model(vocab_size=len(chars), block_size=64), root / "out" / "demo", char_tokenizer(chars))
    (root / ".venv").symlink_to(Path(sys.prefix))  # the README's `.venv/bin/hf-nanogpt`
    # what the README's FineWeb commands would write (GPT-2 tokens of input.txt in llm.c's shards, llm.c's names)
    ids = gpt2_tokenizer()((root / "input.txt").read_text())["input_ids"]
    for folder in (root / "data" / "fineweb10B", root / "llm.c" / "dev" / "data" / "fineweb10B"):
        folder.mkdir(parents=True)
        for name, part in (("val_000000", ids[:2_000]), ("train_000001", ids[2_000:12_000]), ("train_000002", ids[12_000:])):
            write_shard(folder / f"fineweb_{name}.bin", part)
    shutil.copytree(ROOT / "configs", root / "configs")  # the README's paths are the repo's
    return root, {"__name__": "__readme__"}


def run_line(line: str, cwd: Path, env: dict) -> None:
    """A shell line; `hf-nanogpt` runs in this process (the console script's own entry point, without a
    Python start-up per line), anything else through bash."""
    argv = shlex.split(line, comments=True)
    if Path(argv[0]).name == "hf-nanogpt":
        try:
            status = cli.main(argv[1:])
        except SystemExit as exit_:
            status = exit_.code
        assert status == 0, f"README line failed (exit status {status}): {line}"
        return
    result = subprocess.run(["bash", "-c", shlex.join(argv)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README line failed: {line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda block: f"README.md:{block[0]}-{block[1]}")
def test_readme_block_runs(block, world, monkeypatch, hub):
    line, language, text = block
    root, namespace = world
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_TOKEN", README_TOKEN)
    real_train = hf_nanogpt.train.train
    monkeypatch.setattr(hf_nanogpt.train, "train", lambda cfg: real_train(dataclasses.replace(cfg, **TINY)))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    if language == "python":
        exec(compile(text, f"README.md, line {line}", "exec"), namespace)
        return
    for source_line in text.splitlines():
        if not source_line.strip() or source_line.lstrip().startswith("#"):
            continue
        reason = next((why for piece, why in NOT_RUN.items() if piece in source_line), None)
        if reason is None:
            run_line(source_line, root, env)


def test_every_line_left_out_says_why_and_still_exists():
    """NOT_RUN may not go stale: each of its entries still matches a README line."""
    lines = [line for _, _, text in readme_blocks() for line in text.splitlines()]
    for piece in NOT_RUN:
        assert any(piece in line for line in lines), piece
