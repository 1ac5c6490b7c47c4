# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (a CPU build is on the machines we develop on); pyproject keeps a range for users.
TORCH_PIN := torch==2.13.0
# .venv gets the exact versions in the lock (pip constraints), so a test run is reproducible; `make lock` renews it.
LOCK := requirements-lock.txt
# `make test-versions` runs the tests that meet transformers on the oldest release pyproject admits and on the
# newest, resolved when it runs: the day a new release breaks us, it says so.
TRANSFORMERS_FLOOR := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
VERSION_TESTS := tests/test_model.py tests/test_generation.py tests/test_fidelity.py tests/test_compile.py \
	tests/test_hf_integration.py tests/test_remote_code_versions.py tests/test_conversion_nanogpt.py \
	tests/test_conversion_gpt2.py tests/test_cli.py tests/test_heads.py tests/test_peft.py tests/test_chat.py \
	tests/test_chat_cli.py tests/test_serve.py
FLOOR := .venv-floor
NEWEST := .venv-newest

.PHONY: demo test test-versions bench gpu-check install lock clean

# The stamp is rebuilt when pyproject.toml or the lock changes, so the second run is fast.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]" -c $(LOCK)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m hf_nanogpt.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

$(FLOOR)/.installed: pyproject.toml
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install --quiet $(TORCH_PIN)
	$(FLOOR)/bin/python -m pip install --quiet -e ".[dev]" "transformers==$(TRANSFORMERS_FLOOR)"
	touch $@

# floor <-> newest for the remote code (both directions run in the floor's session), newest <-> lock in the other
test-versions: $(VENV)/.installed $(FLOOR)/.installed
	test -x $(NEWEST)/bin/python || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet $(TORCH_PIN)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" $(TORCH_PIN)
	@for v in $(VENV) $(FLOOR) $(NEWEST); do $$v/bin/python -c "import sys, transformers; print(sys.argv[1], 'transformers', transformers.__version__)" $$v; done
	HF_NANOGPT_OTHER_PYTHON=$(abspath $(NEWEST))/bin/python $(FLOOR)/bin/python -m pytest $(VERSION_TESTS) -q
	HF_NANOGPT_OTHER_PYTHON=$(abspath $(VENV))/bin/python $(NEWEST)/bin/python -m pytest $(VERSION_TESTS) -q

# the newest versions pyproject admits, resolved now, written as the lock (torch stays pinned above)
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet $(TORCH_PIN)
	.venv-lock/bin/python -m pip install --quiet -e ".[dev]"
	{ echo "# Exact versions for make test (pip constraints, Python $$(.venv-lock/bin/python -c 'import sys; print(*sys.version_info[:2], sep=".")')); torch is pinned in the Makefile. Renew: make lock"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i "^torch=="; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# the side-by-side benchmarks (about 30 minutes on 2 cores); writes BENCHMARKS.md. NANOGPT=path/to/nanoGPT
# adds the rows against nanoGPT's own generate (longer: its 512-token runs take minutes each);
# LLAMA_CPP=path/to/llama.cpp/build the rows against llama.cpp's decoding (llama-bench, llama-simple).
bench: $(VENV)/.installed
	$(PY) -m benchmarks.run $(if $(NANOGPT),--nanogpt $(NANOGPT)) $(if $(LLAMA_CPP),--llama-cpp $(LLAMA_CPP))

# B4 on one GPU in under 5 minutes: training MFU at GPT-2 124M, decode at batch 1 and 32, GPU-vs-CPU logits (Markdown
# for BENCHMARKS.md); without CUDA, a dry run on tiny shapes. No .venv there: PYTHONPATH=. python3 -m benchmarks.gpu_check
gpu-check: $(VENV)/.installed
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) $(FLOOR) $(NEWEST) .venv-lock out .pytest_cache
