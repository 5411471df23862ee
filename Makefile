# The README's two commands: `make quickstart` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel keeps set-up fast on CPU machines; override (make TORCH_SPEC='torch') on a GPU box.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test quickstart bench clean

$(BIN)/genret: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/genret

setup: $(BIN)/genret

test: setup
	# The pytest script, not `python -m pytest`: -m would put the repo root first on sys.path, where the
	# top-level tokenizers/ folder would shadow Hugging Face's `tokenizers` for any library that imports it.
	$(BIN)/pytest -q tests

quickstart: setup
	$(BIN)/genret quickstart

bench: setup
	$(BIN)/python benchmarks/bench_kmeans.py

clean:
	rm -rf $(VENV) build *.egg-info runs
