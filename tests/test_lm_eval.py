"""lm-evaluation-harness on our model folders, end to end and offline.

A tiny local task set (multiple choice, rolling perplexity, greedy generation; JSON lines in a temporary
folder) runs on a tiny GPT-2 BPE model folder twice at once, in two subprocesses: through our entry point
(`python -m hf_nanogpt.lm_eval --model hf`, lm-eval's command line, no trust_remote_code) and through
lm-eval's Python API with trust_remote_code=True where hf_nanogpt cannot be imported (the folder's own
remote code). Every number lm-eval logs is checked against what the model computes directly: each
choice's log-likelihood, each document's rolling log-likelihood over block_size windows (the document is
longer than block_size, so lm-eval must read block_size as the model's max length), and each prompt's
greedy continuation from model.generate.
"""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import BLOCK_HF_NANOGPT, tiny_model
from hf_nanogpt.saving import save_model_folder
from hf_nanogpt.tokenization import gpt2_tokenizer

BLOCK_SIZE = 32
MAX_GEN_TOKS = 6
UNTIL = "\n\n"

CHOICE_DOCS = [
    {"question": "The cat sat on the", "choices": ["mat", "moon", "idea"], "label": 0},
    {"question": "Two plus two is", "choices": ["four", "blue"], "label": 1},
]
PERPLEXITY_DOCS = [  # the first is 73 tokens: lm-eval rolls three windows of BLOCK_SIZE over it
    {
        "text": "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
        "it was the season of Darkness, it was the spring of hope, it was the winter of despair."
    },
    {"text": "Call me Ishmael."},
]
GREEDY_DOCS = [{"prompt": "Once upon a time", "answer": " there"}, {"prompt": "Hello", "answer": " world"}]

TASKS = {  # task name -> (docs, the rest of its YAML)
    "hf_nanogpt_choice": (
        CHOICE_DOCS,
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\nmetric_list: [{metric: acc}]\n',
    ),
    "hf_nanogpt_perplexity": (
        PERPLEXITY_DOCS,
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list: [{metric: word_perplexity}]\n',
    ),
    "hf_nanogpt_greedy": (
        GREEDY_DOCS,
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        f"generation_kwargs: {{until: {json.dumps([UNTIL])}, max_gen_toks: {MAX_GEN_TOKS}}}\n"
        "metric_list: [{metric: exact_match}]\n",
    ),
}

# lm-eval's Python API, as someone without this package runs it on a folder's remote code; its task
# manager reads only our tasks (the command line indexes lm-eval's 14,000 task files first, ~12 s)
REMOTE_CODE_RUN = BLOCK_HF_NANOGPT + textwrap.dedent(
    """
    import json
    from pathlib import Path
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable
    folder, tasks, task_dir, out = sys.argv[1:]
    run = simple_evaluate(
        model="hf", model_args=f"pretrained={folder},trust_remote_code=True", tasks=tasks.split(","),
        batch_size=2, device="cpu",
        task_manager=TaskManager(include_path=task_dir, include_defaults=False), log_samples=True,
    )
    Path(out).write_text(
        json.dumps({"results": run["results"], "samples": run["samples"]}, default=handle_non_serializable)
    )
    """
)


def write_tasks(folder) -> None:
    """Each task as a YAML file and its documents as JSON lines, read through `datasets`' json loader."""
    folder.mkdir()
    for name, (docs, rest) in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}\n"
            f"test_split: test\n{rest}"
        )


def read_output_path(out) -> dict:
    """{"results", "samples"} from the command line's --output_path with --log_samples."""
    (results_file,) = out.rglob("results_*.json")
    samples = {}
    for name in TASKS:
        (samples_file,) = out.rglob(f"samples_{name}_*.jsonl")
        samples[name] = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return {"results": json.loads(results_file.read_text())["results"], "samples": samples}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The model, its tokenizer, and each run's (results, {task: samples in doc order}, log), both run at once."""
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), block_size=BLOCK_SIZE)
    folder, tasks = root / "model", root / "tasks"
    save_model_folder(model, folder, tokenizer)
    write_tasks(tasks)
    commands = {
        "entry_point": [
            sys.executable,
            "-m",
            "hf_nanogpt.lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={folder}",
            "--tasks",
            ",".join(TASKS),
            "--include_path",
            str(tasks),
            "--batch_size",
            "2",
            "--log_samples",
            "--output_path",
            str(root / "entry_point"),
        ],
        "remote_code": [
            sys.executable,
            "-c",
            REMOTE_CODE_RUN,
            str(folder),
            ",".join(TASKS),
            str(tasks),
            str(root / "remote_code.json"),
        ],
    }
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    done = {}
    for name, process in processes.items():
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} run failed:\n{log[-4000:]}"
        run = (
            read_output_path(root / name)
            if name == "entry_point"
            else json.loads((root / "remote_code.json").read_text())
        )
        samples = {task: sorted(rows, key=lambda row: row["doc_id"]) for task, rows in run["samples"].items()}
        done[name] = (run["results"], samples, log)
    return model, tokenizer, done


def continuation_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context), from one forward pass over both (less the last token, which
    predicts nothing)."""
    ids = context_ids + continuation_ids
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
    positions = range(len(context_ids) - 1, len(ids) - 1)  # the logits that predict each continuation token
    return sum(logprobs[p, ids[p + 1]].item() for p in positions)


def rolling_logprob(model, ids: list[int], prefix_id: int, block_size: int) -> float:
    """log p(document) with every token predicted from as many of the tokens before it as fit in
    block_size (the first from the prefix token alone): chunks of block_size tokens, each scored in a
    window that ends with it."""
    tokens, total = [prefix_id] + ids, 0.0
    for start in range(0, len(ids), block_size):
        end = min(start + block_size, len(ids))  # this chunk predicts ids[start:end] = tokens[start+1:end+1]
        window_start = max(0, end - block_size)
        context = tokens[window_start : start + 1]
        total += continuation_logprob(model, context, tokens[start + 1 : end + 1])
    return total


@pytest.mark.parametrize("run", ["entry_point", "remote_code"])
def test_multiple_choice_loglikelihoods_are_the_models(runs, run):
    model, tokenizer, done = runs
    results, samples, _ = done[run]
    correct = []
    for doc, sample in zip(CHOICE_DOCS, samples["hf_nanogpt_choice"], strict=True):
        context = tokenizer.encode(doc["question"])
        expected = [continuation_logprob(model, context, tokenizer.encode(" " + choice)) for choice in doc["choices"]]
        logged = [float(loglikelihood) for loglikelihood, _is_greedy in sample["filtered_resps"]]  # logged as text
        assert logged == pytest.approx(expected, abs=1e-4)
        correct.append(max(range(len(expected)), key=expected.__getitem__) == doc["label"])
    assert results["hf_nanogpt_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


@pytest.mark.parametrize("run", ["entry_point", "remote_code"])
def test_rolling_perplexity_is_the_models(runs, run):
    model, tokenizer, done = runs
    results, samples, _ = done[run]
    assert len(tokenizer.encode(PERPLEXITY_DOCS[0]["text"])) > 2 * BLOCK_SIZE  # the last window a partial one
    total_logprob = total_words = 0
    for doc, sample in zip(PERPLEXITY_DOCS, samples["hf_nanogpt_perplexity"], strict=True):
        expected = rolling_logprob(model, tokenizer.encode(doc["text"]), tokenizer.eos_token_id, BLOCK_SIZE)
        assert float(sample["filtered_resps"][0]) == pytest.approx(expected, abs=1e-4)
        total_logprob += expected
        total_words += len(re.split(r"\s+", doc["text"]))
    word_perplexity = results["hf_nanogpt_perplexity"]["word_perplexity,none"]
    assert math.log(word_perplexity) == pytest.approx(-total_logprob / total_words, abs=1e-5)


@pytest.mark.parametrize("run", ["entry_point", "remote_code"])
def test_greedy_generation_is_the_models(runs, run):
    """lm-eval generates for both prompts in one left-padded batch; each row gets its own greedy tokens."""
    model, tokenizer, done = runs
    _, samples, _ = done[run]
    for doc, sample in zip(GREEDY_DOCS, samples["hf_nanogpt_greedy"], strict=True):
        ids = torch.tensor([tokenizer.encode(doc["prompt"])])
        new_ids = model.generate(ids, max_new_tokens=MAX_GEN_TOKS, do_sample=False)[0, ids.shape[1] :]
        expected = tokenizer.decode(new_ids, skip_special_tokens=True).split(UNTIL)[0]
        assert expected  # the tiny model says something, so the comparison means something
        assert sample["filtered_resps"][0] == expected


def test_entry_point_tells_lm_eval_the_model_is_causal(runs):
    """Without trust_remote_code, lm-eval would warn that the nanogpt model type is neither causal nor
    seq2seq; our entry point tells it (it still picks the causal backend either way)."""
    *_, log = runs[2]["entry_point"]
    assert "Initializing hf model" in log
    assert "neither marked as CausalLM" not in log


def test_entry_point_without_lm_eval_says_what_to_install(monkeypatch, capsys):
    from hf_nanogpt import lm_eval as entry_point

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    assert entry_point.main(["--model", "hf"]) == 2
    assert 'pip install "hf-nanogpt[eval]"' in capsys.readouterr().err
