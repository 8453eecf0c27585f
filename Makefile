# Quick start: `make demo` (fine-tune the embedded default) and `make test` (the whole suite).
# `make bench`: llmft side by side with HF Trainer + PEFT and TRL on this machine (BENCHMARKS.md).
# Both create .venv on first use and install the project into it; nothing else is needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: a CPU build where pip finds one locally, the CUDA build from PyPI on a GPU machine.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.llmft-installed
BENCH_STAMP := $(VENV)/.llmft-bench-installed

.PHONY: install demo test lint clean bench

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

# The peers (TRL) are benchmark-only requirements, never llmft's own dependencies.
$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

# BENCH_ARGS for bigger runs, e.g. make bench BENCH_ARGS="--samples 2000" (python -m benchmarks.harness -h).
bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.harness $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks *.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache  # runs/ holds your runs: delete it yourself
