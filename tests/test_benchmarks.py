"""`make bench` on tiny models: every benchmark runs and writes its section. No timing is asserted."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_bench_suite_runs_on_tiny_models(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# old\n<!-- bench:generation -->\nstale\n<!-- /bench:generation -->\n")
    cmd = [sys.executable, "-m", "benchmarks.run", "--tiny", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = out.read_text()

    assert "stale" not in text  # the section was replaced, not appended
    for name in ("generation", "training", "conversion"):
        assert text.count(f"<!-- bench:{name} -->") == 1
    assert "transformers: 5." in text
    assert re.search(r"CPU: .+; cores: \d+ \(torch threads: \d+\); torch: ", text)

    # B1: both cache modes at both batch sizes in both dtypes, float32's greedy tokens equal in every row (bfloat16
    # rounds differently in each model's kernels), the bandwidth table, bfloat16's accuracy on the two fixtures
    # (in B1's own section: the notes appended after the sections keep earlier machines' B1 tables)
    b1 = re.search(r"<!-- bench:generation -->.*?<!-- /bench:generation -->", text, re.S).group(0)
    row = r"^\| (\d+) \| (float32|bfloat16) \| (eager|static-compile) \| [\d.]+ \| [\d.]+ \| [\d.]+x \| (\S+) \|"
    generation = re.findall(row, b1, re.M)
    assert sorted((b, d, m) for b, d, m, _ in generation) == [
        (b, d, m) for b in "18" for d in ("bfloat16", "float32") for m in ("eager", "static-compile")
    ]
    assert all(same == "yes" for _, dtype, _, same in generation if dtype == "float32")
    assert "effective GB/s" in b1 and "of the read probe" in b1
    accuracy = re.findall(r"^\| (A_char_nobias|B_bpe_bias) \| \d+ x \d+ \| ([\d.]+) \| ([\d.]+) \| ", b1, re.M)
    assert [name for name, *_ in accuracy] == ["A_char_nobias", "B_bpe_bias"]
    assert all(abs(float(b) / float(a) - 1) < 0.05 for _, a, b in accuracy)  # bfloat16 is close, not equal

    # B2: four runs per shape with step times and FLOP/s, and a loss-curve row whose two curves agree
    steps = re.findall(
        r"^\| tiny \(block 32, batch 2\) \| [^|]+ \| ([\d.]+) \| [\d,]+ \| [\d.]+ \(\d+% of \w+ mm\) \|", text, re.M
    )
    assert len(steps) == 4 and all(float(ms) > 0 for ms in steps)
    curve = re.search(r"^\| tiny \| 12 \| ([\d.e+-]+) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \|", text, re.M)
    assert curve, text
    assert float(curve.group(1)) < 1e-4  # same weights, same batches, both float32: the same losses
    assert abs(float(curve.group(4)) - float(curve.group(5))) < 0.5

    # B3: both conversions with a peak RSS
    assert (
        len(
            re.findall(
                r"^\| (GPT-2|nanoGPT) -> hf_nanogpt \| .+ \| [\d.]+x \| [\d.]+ GB \| [\d.]+x \| 1 \|", text, re.M
            )
        )
        == 2
    )

    # a second run of one benchmark keeps the others' sections
    before = text
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--tiny",
        "--repeats",
        "1",
        "--only",
        "conversion",
        "--out",
        str(out),
    ]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300).returncode == 0
    after = out.read_text()
    generation_section = re.search(r"<!-- bench:generation -->.*<!-- /bench:generation -->", before, re.S).group(0)
    assert generation_section in after


def test_own_tokenizer_benchmark_runs_on_a_tiny_corpus(tmp_path):
    """benchmarks/own_tokenizer.py's three runs and its speed row, on a corpus of our own (no download)."""
    import json
    import random

    words = "el la de que y en los se del las un por con no una su para es al lo como más o pero sus le ha me".split()
    words += "árbol canción niño corazón mañana pequeño último jamás después también".split()
    rng = random.Random(0)
    corpus = tmp_path / "es.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(rng.choices(words, k=60)) + ".\n"}) + "\n" for _ in range(400))
    )
    cmd = [sys.executable, "-m", "benchmarks.own_tokenizer", "--tiny", "--corpus", str(corpus)]
    cmd += [
        "--work",
        str(tmp_path / "work"),
        "--iters",
        "4",
        "--vocab",
        "300",
        "--speed-mb",
        "0.2",
        "--speed-vocab",
        "300",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(
        r"^\| (char|gpt2|bpe:300) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| \**([\d.]+)\** \|", result.stdout, re.M
    )
    assert [r[0] for r in rows] == ["char", "gpt2", "bpe:300"]
    per_byte = {name: float(tpb) for name, _, tpb, _, _ in rows}
    assert per_byte["bpe:300"] < per_byte["char"] <= 1.0
    assert all(0 < float(bpb) < 20 for *_, bpb in rows)
    assert re.search(r"^\| 0\.\d MB \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d,]+ MB \|$", result.stdout, re.M)


def test_serving_benchmark_runs_on_a_tiny_model(tmp_path):
    """benchmarks/serving.py (B5) against `hf-nanogpt serve` with and without continuous batching, on a tiny model:
    every level gets its row, every request its tokens, and the continuous-batching ratio is reported."""
    import json

    from helpers import tiny_model
    from hf_nanogpt.saving import save_model_folder
    from hf_nanogpt.tokenization import gpt2_tokenizer

    folder = save_model_folder(tiny_model(vocab_size=50304, block_size=128), tmp_path / "model", gpt2_tokenizer())
    out = tmp_path / "b5.json"
    cmd = [sys.executable, "-m", "benchmarks.serving", "--model", str(folder), "--concurrency", "1", "3"]
    cmd += ["--max-tokens", "4", "--requests-per-level", "1", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(r"^\| (hf-nanogpt serve, [a-z ]+) \| (\d+) \| [\d.]+ \| [\d.]+ \| \d+ \|$", result.stdout, re.M)
    assert [(name.split(", ")[1], int(level)) for name, level in rows] == [
        ("continuous batching", 1), ("continuous batching", 3), ("no continuous batching", 1),
        ("no continuous batching", 3),
    ]
    assert "continuous batching / none at 3 requests: " in result.stdout
    results = json.loads(out.read_text())["results"]
    assert all(level["tokens"] == 4 * int(c) for server in results.values() for c, level in server.items())
