"""`make gpu-check` without CUDA: the dry run of benchmarks/gpu_check.py (tiny shapes on the CPU) runs every
section without a failing row, from a bare checkout as on a lent GPU machine. No timing is asserted."""

import contextlib
import importlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # torch.compile traces the training step and the decode step


def table(report: str, heading: str) -> list[list[str]]:
    """The cells of the body rows of the first table after `### heading`."""
    section = report.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell: str) -> float:
    value = float(cell.rstrip("%x").replace(",", ""))
    assert math.isfinite(value), cell
    return value


def test_dry_run_from_a_bare_checkout(tmp_path):
    out = tmp_path / "gpu-check.md"
    # -S: no .pth files, so the editable install's import hook stays out and hf_nanogpt comes from the checkout on
    # PYTHONPATH, as on a GPU machine it was copied to (the interpreter's own path after it: torch, transformers).
    # aot_eager: torch.compile traces the same graphs and generates no code (inductor takes a minute on 2 cores).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-S", "-m", "benchmarks.gpu_check", "--compile-backend", "aot_eager", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    assert report in result.stdout  # printed and written alike
    assert "## B4: GPU check (CPU dry run)" in report and "transformers 5." in report
    assert "failed" not in report and "every row ran" in report
    assert "**Summary**: a dry run on the CPU" in report

    rows = {(r[0], r[1]): r[2:] for r in table(report, "Training")}
    assert list(rows) == [(path, mode) for path in ("sdpa", "sdpa, flash kernel forced", "flash_attention_2")
                          for mode in ("eager", "torch.compile")]
    for mode in ("eager", "torch.compile"):
        ms, first, tokens, mfu, loss = map(number, rows["sdpa", mode])
        assert ms > 0 and first >= 0 and tokens > 0 and 0 < mfu < 100
        assert abs(loss - math.log(128)) < 0.5  # random weights over a vocabulary of 128: about ln 128
        assert rows["sdpa, flash kernel forced", mode][0] == "skipped: CPU"  # CUDA only
        assert rows["flash_attention_2", mode][0].startswith(("not installed", "skipped: CPU"))

    decode = table(report, "Decode")
    assert [r[0] for r in decode] == ["1", "32"]
    for _, gpt2_tok_s, ours_tok_s, ratio, same in decode:
        assert number(gpt2_tok_s) > 0 and number(ours_tok_s) > 0 and number(ratio) > 0
        assert same == "yes" or same.startswith("**no** (from new token")  # bfloat16 may round apart

    (device, dtype, max_diff, agree), = table(report, "Parity")
    assert (device, dtype) == ("CPU", "bfloat16")  # against the CPU in float32
    assert number(max_diff) < 0.05 and number(agree) >= 90


def test_a_failing_configuration_fails_its_row_only(monkeypatch):
    """One configuration raising (an attention implementation that does not exist) fills its row with the error;
    the next still runs, the summary counts them, and main's exit status would be 1."""
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is the checkout's, not installed
    gpu_check = importlib.import_module("benchmarks.gpu_check")
    paths = [("bogus", "no_such_attention", contextlib.nullcontext, None),
             ("sdpa", "sdpa", contextlib.nullcontext, None)]
    monkeypatch.setattr(gpu_check, "attention_paths", lambda device: paths)
    plan = gpu_check.Plan(device=torch.device("cpu"), **gpu_check.DRY_RUN_PLAN, compile_backend="aot_eager")
    report, failed = gpu_check.run(plan, only=["training"])
    rows = {(r[0], r[1]): r[2:] for r in table(report, "Training")}
    assert failed == 2
    assert all(re.match(r"\*\*failed\*\*: \w+Error: .*no_such_attention", rows["bogus", mode][0])
               for mode in ("eager", "torch.compile"))
    assert number(rows["sdpa", "eager"][0]) > 0 and number(rows["sdpa", "torch.compile"][0]) > 0
    assert "**2 rows failed**" in report
