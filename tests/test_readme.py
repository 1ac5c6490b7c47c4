"""Every shell and Python block of README.md and of each guide in docs/ runs as written, top to bottom, as a
reader would run them; and the documents stay findable (README.md short, every guide linked, no dead link).

Each document runs in a folder of its own, laid out as the documents assume: a nanoGPT out_dir
(`out-shakespeare-char`, the char-level fixture), a nanoGPT GPT-2 checkpoint (`out/ckpt.pt`, the BPE fixture),
a GPT2LMHeadModel folder (`./gpt2`), `input.txt`, `out/demo` and llm.c's FineWeb shards, each a tiny stand-in
where a document means a big model or a long run; every training run gets a tiny model and a few iterations
(TINY) on top. What a document writes (`gpt2-nanogpt`, say) it writes itself, so each guide runs alone.
A document's Python blocks share one namespace, as in a notebook; each shell line runs on its own
(`hf-nanogpt` through its entry point, `cli.main`, in this process, to spare a Python start-up per line).
The Hub is the local test Hub, where the token in HF_TOKEN belongs to `your-name`. A line that cannot run
here is listed in NOT_RUN with the reason; any other line that fails, fails this test.
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

import hf_nanogpt.train
from helpers import FIXTURES, NANOGPT_FIXTURES, README_TOKEN, tiny_model
from hf_nanogpt import cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCUMENTS = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

NOT_RUN = {  # a piece of a line -> why it does not run here (the longest piece a line holds decides)
    "make demo": "two minutes of training: tests/test_demo.py runs the demo",
    "make test": "it is the test suite this test is part of",
    "make test-versions": "it installs two more virtual environments (network); CI runs it after make test",
    "make bench": "about 30 minutes of benchmarks: tests/test_benchmarks.py runs them on tiny models",
    "make gpu-check": "it creates .venv; tests/test_gpu_check.py runs the same check's CPU dry run",
    "make lock": "it resolves the newest versions on PyPI (network) and rewrites requirements-lock.txt",
    "pip install": "it would install into the environment running the tests",
    "hf auth login": "it asks for a token interactively; here HF_TOKEN is set, the other way the line gives",
    "ddp_8gpu": "it needs 8 GPUs",
    "fsdp_cpu_2proc.yaml": "a full run of the preset: tests/test_distributed.py runs this line (the config's header)",
    "multinode_cpu_2x1.yaml": "two machines: tests/test_distributed.py runs the two lines at once, briefly",
    "--tasks hellaswag": "lm-eval downloads hellaswag and lambada from the Hub (network); the local task runs",
    "HuggingFaceFW/fineweb": "it streams FineWeb from the Hub (network); the world has shards in data/fineweb10B",
    "dev/data/fineweb.py": "llm.c's script downloads FineWeb (network); the world has shards where it writes them",
}
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, max_iters=4, eval_interval=2, eval_iters=1,
            always_save_checkpoint=True, log_with="none", wandb_log=False, compile=False,
            gradient_accumulation_steps=1)  # what every training run of the documents gets (gpt2_124m's wandb too)


def code_blocks(document: str) -> list[tuple[int, str, str]]:
    """(line, language, text) of each ```bash and ```python block of a document."""
    text = (ROOT / document).read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


def all_blocks() -> list[tuple[str, int, str, str]]:
    return [(document, *block) for document in DOCUMENTS for block in code_blocks(document)]


def build_world(root: Path) -> None:
    """The files every document may assume, in `root`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_nanogpt.data.shards import write_shard
    from hf_nanogpt.saving import save_model_folder
    from hf_nanogpt.tokenization import char_tokenizer, gpt2_tokenizer

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
    # what the FineWeb commands would write (GPT-2 tokens of input.txt in llm.c's shards, llm.c's names)
    ids = gpt2_tokenizer()((root / "input.txt").read_text())["input_ids"]
    for folder in (root / "data" / "fineweb10B", root / "llm.c" / "dev" / "data" / "fineweb10B"):
        folder.mkdir(parents=True)
        parts = ("val_000000", ids[:2_000]), ("train_000001", ids[2_000:12_000]), ("train_000002", ids[12_000:])
        for name, part in parts:
            write_shard(folder / f"fineweb_{name}.bin", part)
    shutil.copytree(ROOT / "configs", root / "configs")  # the documents' paths are the repo's


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """document -> (the folder its commands run in, the namespace its Python blocks share), each made on first
    use as a copy of one prepared world."""
    base = tmp_path_factory.mktemp("world")
    build_world(base)
    made = {}

    def world(document: str) -> tuple[Path, dict]:
        if document not in made:
            root = tmp_path_factory.mktemp(document.replace("/", "-").removesuffix(".md"))
            shutil.copytree(base, root, symlinks=True, dirs_exist_ok=True)
            made[document] = root, {"__name__": "__readme__"}
        return made[document]

    return world


def not_run_reason(line: str) -> str | None:
    pieces = [piece for piece in NOT_RUN if piece in line]
    return NOT_RUN[max(pieces, key=len)] if pieces else None


def run_line(line: str, cwd: Path, env: dict, document: str) -> None:
    """A shell line; `hf-nanogpt` runs in this process (the console script's own entry point, without a
    Python start-up per line), anything else through bash."""
    argv = shlex.split(line, comments=True)
    if Path(argv[0]).name == "hf-nanogpt":
        try:
            status = cli.main(argv[1:])
        except SystemExit as exit_:
            status = exit_.code
        assert status == 0, f"{document} line failed (exit status {status}): {line}"
        return
    result = subprocess.run(["bash", "-c", shlex.join(argv)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{document} line failed: {line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("block", all_blocks(), ids=lambda block: f"{block[0]}:{block[1]}-{block[2]}")
def test_block_runs(block, worlds, monkeypatch, hub):  # hub: the local Hub, where HF_TOKEN is `your-name`'s
    document, line, language, text = block
    root, namespace = worlds(document)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_TOKEN", README_TOKEN)
    real_train = hf_nanogpt.train.train
    monkeypatch.setattr(hf_nanogpt.train, "train", lambda cfg: real_train(dataclasses.replace(cfg, **TINY)))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    if language == "python":
        exec(compile(text, f"{document}, line {line}", "exec"), namespace)
        return
    for source_line in text.splitlines():
        if not source_line.strip() or source_line.lstrip().startswith("#"):
            continue
        if not_run_reason(source_line) is None:
            run_line(source_line, root, env, document)


def test_every_line_left_out_says_why_and_still_exists():
    """NOT_RUN may not go stale: each of its entries is still the reason for some line of a document."""
    reasons = {not_run_reason(line) for *_, text in all_blocks() for line in text.splitlines()}
    for piece, why in NOT_RUN.items():
        assert why in reasons, piece


def test_readme_is_short_and_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, "README.md is an overview: move detail to a guide in docs/"
    targets = {target.split("#")[0] for _, target in links(readme)}
    for document in DOCUMENTS[1:]:
        assert document in targets, f"README.md does not link {document}"


def links(markdown: str) -> list[tuple[str, str]]:
    """(text, target) of each Markdown link outside code blocks."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", prose)


def anchors(markdown: str) -> set[str]:
    """GitHub's ids for a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", prose, re.M)}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_point_to_what_exists(document):
    source = ROOT / document
    for text, target in links(source.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        assert linked.exists(), f"{document}: [{text}]({target}) points to {linked}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{document}: [{text}]({target}): no such heading"
