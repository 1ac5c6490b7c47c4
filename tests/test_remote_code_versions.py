"""Remote code across transformers releases: a folder saved under one release loads with
trust_remote_code=True under another, in a process where hf_nanogpt cannot be imported, and generates
nanoGPT's own greedy tokens (through generate() and through continuous batching, generate_batch) and the same
pipeline text as the package does.

The other release is the Python in HF_NANOGPT_OTHER_PYTHON (`.ci/run` and `make test-versions` pass
the floor's and the newest release's virtualenvs to each other); without it, this Python on both sides.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, pipeline

from helpers import BLOCK_HF_NANOGPT, NANOGPT_FIXTURES

pytestmark = pytest.mark.slow

FIXTURES = ["A_char_nobias", "B_bpe_bias"]
THIS = sys.executable
OTHER = os.environ.get("HF_NANOGPT_OTHER_PYTHON", sys.executable)
DIRECTIONS = (
    {"this-saves": (THIS, OTHER), "other-saves": (OTHER, THIS)} if OTHER != THIS else {"this-python": (THIS, THIS)}
)
PIPELINE_TOKENS = 24

SAVE = textwrap.dedent(
    """
    import json, sys
    import transformers
    from hf_nanogpt.conversion.nanogpt import convert_nanogpt
    out, *sources = sys.argv[1:]
    for source in sources:
        convert_nanogpt(source, f"{out}/{source.rstrip('/').split('/')[-1]}")
    print(json.dumps({"transformers": transformers.__version__}))
    """
)

LOAD = BLOCK_HF_NANOGPT + textwrap.dedent(
    """
    import copy
    import json
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    results = {"transformers": transformers.__version__}
    for folder, prompt_ids, max_new_tokens in json.loads(sys.argv[1]):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        prompt = torch.tensor([prompt_ids])
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
        cached, uncached = model.generate(prompt, **kwargs), model.generate(prompt, use_cache=False, **kwargs)
        # continuous batching (paged KV cache): the prompt beside a shorter one, each request's own tokens
        config = copy.deepcopy(model.generation_config)
        config.update(do_sample=False, max_new_tokens=max_new_tokens)
        batched = model.generate_batch([prompt_ids, prompt_ids[:3]], generation_config=config)
        pipe = pipeline(
            "text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        )
        results[folder] = {
            "module": type(model).__module__,
            "new_ids": cached.sequences[0, len(prompt_ids):].tolist(),
            "uncached_new_ids": uncached.sequences[0, len(prompt_ids):].tolist(),
            "batched_new_ids": [output.generated_tokens for output in batched.values()],
            "max_logit_diff": max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)),
            "pipeline": pipe("ROMEO:", max_new_tokens=%d, do_sample=False)[0]["generated_text"],
        }
    print(json.dumps(results))
    """
    % PIPELINE_TOKENS
)


def run(python: str, script: str, *args: str, home) -> dict:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::FutureWarning"}
    result = subprocess.run(
        [python, "-c", script, *args], capture_output=True, text=True, env=env, cwd=home, timeout=600
    )
    assert result.returncode == 0, f"{python}:\n{result.stderr[-4000:]}"
    # the KV cache's old name warns on 5.24 and later (a FutureWarning, an error here, or a logged line)
    assert "past_key_values" not in result.stderr, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("saver, loader", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_folder_saved_by_one_release_runs_as_remote_code_on_another(saver, loader, tmp_path):
    saved = run(
        saver, SAVE, str(tmp_path / "models"), *(str(NANOGPT_FIXTURES / name) for name in FIXTURES), home=tmp_path
    )
    greedy = {name: json.loads((NANOGPT_FIXTURES / name / "greedy.json").read_text()) for name in FIXTURES}
    jobs = [(str(tmp_path / "models" / n), greedy[n]["prompt_ids"], greedy[n]["max_new_tokens"]) for n in FIXTURES]
    loaded = run(loader, LOAD, json.dumps(jobs), home=tmp_path)
    print(f"saved with transformers {saved['transformers']}, loaded as remote code with {loaded['transformers']}")

    for name, (folder, _, _) in zip(FIXTURES, jobs):
        config = json.loads((tmp_path / "models" / name / "config.json").read_text())
        assert config["transformers_version"] == saved["transformers"]
        remote = loaded[folder]
        assert remote["module"].startswith("transformers_modules"), remote["module"]
        assert remote["new_ids"] == remote["uncached_new_ids"] == greedy[name]["new_ids"], name  # nanoGPT's own tokens
        assert greedy[name]["new_ids"] in remote["batched_new_ids"], name  # generate_batch, continuous batching
        assert remote["max_logit_diff"] <= 1e-5, name
        # the package itself, on this process's release, writes the same text from the same folder
        pipe = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(folder), tokenizer=folder)
        assert type(pipe.model).__module__ == "hf_nanogpt.modeling_nanogpt"
        assert (
            remote["pipeline"] == pipe("ROMEO:", max_new_tokens=PIPELINE_TOKENS, do_sample=False)[0]["generated_text"]
        ), name


def test_other_python_is_usable():
    """HF_NANOGPT_OTHER_PYTHON, when set, must name a Python with torch and transformers (not silently none)."""
    result = subprocess.run(
        [OTHER, "-c", "import torch, transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    print(
        f"this side: transformers {transformers.__version__} (torch {torch.__version__}); "
        f"other side: {result.stdout.strip()}"
    )
