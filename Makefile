# The two commands a new user runs are `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup lint test demo compile bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) demo/run_demo.py --out demo-output

compile: setup
	$(VENV)/bin/testprio compile --out build

bench: setup
	$(PY) bench/bench.py

clean:
	rm -rf build demo-output bench/work .pytest_cache
