# robaudit — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# The local package index prints one warning per missing mirror; they are noise here.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help demo test lint typecheck imports unit integration bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(QUIET_PIP)
	$(BIN)/python -m pip install -q -e '.[worker,dev]' $(QUIET_PIP)
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP) ## Train two digit classifiers, audit both through the embedded service, print a table
	$(BIN)/python demo/run_demo.py

test: $(STAMP) lint typecheck imports ## Lint, type-check, import contracts, then the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	$(BIN)/python benchmarks/bench_engine.py

clean: ## Remove the venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
