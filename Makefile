# The two ways in: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KEEP ?= 0

.PHONY: all deps system-deps check fmt test test-fast demo demo-jamf bench clean

all: test

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	@scripts/install-system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

deps: $(STAMP)

check: deps
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: deps
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: check
	$(BIN)/pytest -q

test-fast: deps
	$(BIN)/pytest -q -x

demo: deps
	@KEEP=$(KEEP) scripts/demo.sh

# The MDM variant: a fake Jamf Pro synced into a cluster.
demo-jamf: deps
	@KEEP=$(KEEP) scripts/demo-jamf.sh

bench: deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo .demo-jamf .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
