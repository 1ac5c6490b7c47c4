"""The test session's own isolation (tests/conftest.py): the local Hub starts only when a test needs it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_TEST = "tests/test_hub.py::test_pushing_again_unchanged_makes_no_commit"


def test_the_local_hub_starts_only_for_the_tests_that_use_it(tmp_path):
    """A session of tests that do not use the Hub (tests/test_tokenization.py) starts none: nothing listens
    at HF_ENDPOINT while they run. The first test that requests the `hub` fixture, run after them in the
    same session, finds it listening."""
    report = tmp_path / "report.tsv"  # conftest appends "<test id>\t<hub listening|no hub>" before each test
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tokenization.py", HUB_TEST],
        cwd=ROOT, env={**os.environ, "HF_NANOGPT_TESTS_HUB_REPORT": str(report)}, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line.split("\t") for line in report.read_text().splitlines()]
    before = [state for test, state in lines[:-1] if test.startswith("tests/test_tokenization.py::")]
    assert len(before) == len(lines) - 1 > 0 and set(before) == {"no hub"}
    assert lines[-1] == [HUB_TEST, "hub listening"]
