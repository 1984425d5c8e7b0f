# The two commands a new user runs are `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_VERSION := 26.3

REGISTRY ?= $(or $(TESTPRIO_REGISTRY),ghcr.io/testprio)
IMAGE_TAG ?= $(or $(TESTPRIO_IMAGE_TAG),0.1.0)

.PHONY: setup lint test test-fast label-studio demo demo-eval compile components bench bench-eval bench-mnist clean report browser images images-lock images-push image-bases container-engine test-containers bench-containers
CHROMIUM := /usr/bin/chromium

# constraints-dev.txt pins every package of the environment as tested (see its header).
$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "pip==$(PIP_VERSION)"
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The browser test drives Debian's Chromium (Playwright's own browser download fails here).
browser:
	@test -x $(CHROMIUM) || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Label Studio for tests/test_label_studio.py, in a virtual environment of its own (its pins,
# Django's among them, must not move the project's). The stamp names the version, so that a
# new pin reinstalls; every package it pulls in is pinned by $(LS_CONSTRAINTS), so that a new
# release of one (sentry-sdk 3.0 broke `label-studio init`) cannot break `make test`. The
# template is a migrated database with the test user, so that each test session starts a
# server in seconds, not after two minutes of migrations.
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)
LS_CONSTRAINTS := tests/label-studio-constraints.txt

$(LS_STAMP): $(LS_CONSTRAINTS)
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet "pip==$(PIP_VERSION)"
	$(LS_VENV)/bin/python -m pip install --quiet -c $(LS_CONSTRAINTS) "label-studio==$(LABEL_STUDIO_VERSION)"
	$(PYTHON) -m tests.labelstudiokit template
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)

# One pytest worker per core, each taking whole files (their module fixtures stay shared):
# most tests are one busy process, so the cores run side by side. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: setup lint browser label-studio
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The edit loop's tier: no browser, no framework converters, no pipeline runs, nothing slow.
# `make test` (what CI runs) stays the whole suite.
FAST := not containers and not pipeline and not browser and not converters and not slow
test-fast: setup lint
	$(PY) -m pytest -m "$(FAST)" -q -n $(TEST_WORKERS) --dist loadfile

report: setup
	@test -d demo-output/runs || $(MAKE) demo
	$(VENV)/bin/testprio report --root demo-output/runs

RUNNER ?= subprocess
demo: setup  ## RUNNER=docker: every task in its own image (make images first)
	$(PY) demo/run_demo.py --out demo-output --runner $(RUNNER)

# Which prioritizer finds a CNN's mistakes on real MNIST digits, and does retraining on them
# pay off (paired against random, with the controls); EXPERIMENT=digits: the 8x8 digits.
EXPERIMENT ?= mnist
demo-eval: setup
	$(PY) demo/run_eval_demo.py --out demo-output --experiment $(EXPERIMENT)

compile: setup
	for framework in onnx pytorch tensorflow paddle; do \
	  TESTPRIO_REGISTRY=$(REGISTRY) TESTPRIO_IMAGE_TAG=$(IMAGE_TAG) \
	    $(VENV)/bin/testprio compile --out build --framework $$framework || exit 1; \
	done

components: setup  ## components/yaml/<component>.yaml, one per component (commit them)
	env -u TESTPRIO_REGISTRY -u TESTPRIO_IMAGE_TAG $(PY) -m components.compile_yaml

# Images are built into the local engine's store: Docker if its engine answers, else podman.
container-engine:  ## podman from Debian's packages when no engine is here (root on Debian)
	$(PYTHON) images/build.py engine

image-bases: container-engine  ## pull python:3.11-slim-bookworm, or build a local stand-in
	$(PYTHON) images/build.py bases

# build.py needs only Python's standard library: no virtual environment to set up first.
images: image-bases  ## build every image under images/ for linux/amd64, locally
	$(PYTHON) images/build.py build --registry $(REGISTRY) --tag $(IMAGE_TAG)

# The pipeline with every task in its image (tests/test_containers.py). Builds the images
# those tests run: the pipeline's own (runtime, runtime-gpu, convert-pytorch) and report-app.
CONTAINER_TEST_IMAGES := runtime runtime-gpu convert-pytorch report-app
test-containers: setup browser image-bases
	$(PY) images/build.py build --registry $(REGISTRY) --tag $(IMAGE_TAG) $(CONTAINER_TEST_IMAGES)
	TESTPRIO_REGISTRY=$(REGISTRY) TESTPRIO_IMAGE_TAG=$(IMAGE_TAG) $(PY) -m pytest -m containers tests/test_containers.py

bench-containers: setup  ## the demo in containers against the subprocess runner; cold starts
	$(PY) bench/containers_bench.py

images-push: images  ## push every image to $(REGISTRY) (never one built on a stand-in base)
	$(PYTHON) images/build.py push --registry $(REGISTRY) --tag $(IMAGE_TAG)

images-lock: setup  ## re-resolve images/*/requirements.txt from requirements.in
	$(PY) images/build.py lock

bench: setup
	$(PY) bench/bench.py
	$(PY) bench/report_bench.py
	$(PY) bench/ingest_bench.py

bench-eval: setup  ## coverage and surprise-adequacy costs per 100k samples (bench/RESULTS-evaluation.md)
	$(PY) bench/coverage_bench.py
	$(PY) bench/surprise_bench.py

bench-mnist: setup  ## every prioritizer on real MNIST (~10 min): the table in docs/explanation/reading-an-evaluation.md
	$(PY) bench/mnist_comparison.py
	$(PY) bench/surprise_reduce_bench.py

clean:
	rm -rf build demo-output bench/work .pytest_cache test-artifacts $(LS_VENV)
