# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (a CPU build is on the machines we develop on); pyproject keeps a range for users.
TORCH_PIN := torch==2.13.0

.PHONY: demo test bench install clean

# The stamp is rebuilt when pyproject.toml changes, so the second run is fast.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m hf_nanogpt.demo

test: $(VENV)/.installed
	$(PY) -m pytest tests -q

# the side-by-side benchmarks (about 20 minutes on 2 cores); writes BENCHMARKS.md. NANOGPT=path/to/nanoGPT
# adds the rows against nanoGPT's own generate (longer: its 512-token runs take minutes each).
bench: $(VENV)/.installed
	$(PY) -m benchmarks.run $(if $(NANOGPT),--nanogpt $(NANOGPT))

clean:
	rm -rf $(VENV) out .pytest_cache
