# avbalance: `make install`, `make test`, `make demo`. `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared

.PHONY: help install test test-all demo clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

install:  ## create .venv and install the pinned dependencies and the package
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --no-cache-dir -q -e .

test:  ## fast tests (under 5 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow"

test-all:  ## every test, slow ones included
	$(BIN)/python -m pytest -q

demo:  ## train on the built-in toy dataset (CPU, about a minute)
	$(BIN)/python train.py

clean:  ## remove run outputs and caches
	rm -rf runs outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
