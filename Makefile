# Quick start: `make demo` (fine-tune the embedded default) and `make test` (the whole suite).
# Both create .venv on first use and install the project into it; nothing else is needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: a CPU build where pip finds one locally, the CUDA build from PyPI on a GPU machine.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.llmft-installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmft finetune --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts *.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache  # runs/ holds your runs: delete it yourself
