# robaudit — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# The local package index prints one warning per missing mirror; they are noise here.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
PYTHON ?= python3.11
VENV := .venv
# apt-get needs root: run as root (CI, containers) or through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN := $(VENV)/bin
# The venv is rebuilt when the project or its lock changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/dev.lock requirements/overrides.txt | sha256sum | cut -c1-12)
# uv, itself pinned and hash-checked (requirements/tools.lock), installs the lock: cold (~3 GB of
# wheels downloaded) in about a minute where pip took 3 to 5, and from its cache in seconds.
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
# `make lock` resolves for the Linux x86_64 / Python 3.11 of this machine, CI and the images.
COMPILE := $(UV) pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' $(LOCK_ARGS)

.PHONY: help demo test lint typecheck imports unit integration bench gpu-check clean lock browser

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV): requirements/tools.lock
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --require-hashes -r requirements/tools.lock $(QUIET_PIP)
	@touch $@

# Every wheel comes from the lock, hash-checked and installed as locked (--no-deps: the lock is
# complete, and its requests pin is overridden, see requirements/overrides.txt). The project
# itself adds no dependency of its own (--no-deps) and builds with the locked setuptools
# (--no-build-isolation).
$(STAMP): pyproject.toml requirements/dev.lock requirements/overrides.txt | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes --no-deps -r requirements/dev.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Keeps existing pins where pyproject.toml still allows them; `make lock LOCK_ARGS=--upgrade`
# moves everything to the newest allowed. The API and GPU-worker locks take the dev lock as
# constraints, so every image runs the versions the tests ran.
PROJECT := pyproject.toml requirements/build.in
lock: | $(UV) ## Re-resolve requirements/*.lock (with hashes) from pyproject.toml
	$(COMPILE) $(PROJECT) --extra worker --extra dev --override requirements/overrides.txt \
		-o requirements/dev.lock
	$(COMPILE) $(PROJECT) -c requirements/dev.lock -o requirements/api.lock
	$(COMPILE) $(PROJECT) -c requirements/dev.lock --extra gpu -o requirements/worker-gpu.lock
	$(COMPILE) requirements/tools.in -o requirements/tools.lock

demo: $(STAMP) ## Train two digit classifiers, audit both through the embedded service, print a table
	$(BIN)/python -m demo.run_demo

# On every core (at most 4): much of the suite waits on processes it starts, and on two cores
# this took pytest from 615 s to 545 s. PYTEST_ARGS="-n 0" runs it in one process.
test: $(STAMP) lint typecheck imports browser ## Lint, type-check, import contracts, then the whole test suite
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal $(PYTEST_ARGS)

# The web UI's tests drive Debian's own chromium through its chromedriver (never a downloaded
# browser build), and README's API recipe runs with curl and jq. Installed here, as root,
# when missing; a no-op once present.
browser: ## Install the Debian packages the tests drive (chromium, chromium-driver, curl, jq), if missing
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
		|| ! command -v curl >/dev/null || ! command -v jq >/dev/null; then \
		echo "installing chromium, chromium-driver, curl and jq (apt-get)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get update -qq >/dev/null && \
		$(SUDO) apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver fonts-dejavu-core curl jq >/dev/null; \
	fi

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

imports: $(STAMP) ## import-linter contracts from architecture.md
	$(BIN)/lint-imports

unit: $(STAMP) ## Only the unit tests
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP) ## Run the benchmarks and print the table rows
	$(BIN)/python -m benchmarks.bench_engine

# tests/gpu only, without tests/conftest.py (--noconftest): a GPU machine may lack the service's
# packages. Where torch sees no GPU every test skips, with its reason. GPU_PYTHON picks another
# interpreter (a GPU image's own python3, say); then the venv is not built.
GPU_PYTHON ?= $(BIN)/python
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),$(STAMP)) ## The CUDA tests (engine, batch budget, onnxruntime CUDA EP, sandbox); skip without a GPU
	$(GPU_PYTHON) -m pytest tests/gpu -m gpu --noconftest -p no:cacheprovider $(PYTEST_ARGS)

clean: ## Remove the venv and caches
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
