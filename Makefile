# One command surface: humans and CI call the same targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.DEFAULT_GOAL := help
.PHONY: help install services demo test test-unit ci chaos bench soak lint typecheck deps fmt migrate clean screenshots dashboard

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/billq: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

install: $(BIN)/billq ## create the venv and install billq with dev tools

services: ## make sure RabbitMQ and Postgres answer (start or install them if needed)
	@bash scripts/ensure-services

demo: install services ## seed, distribute, charge with two workers, print the summary
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo

test: install services ## the whole test suite against the real services
	$(BIN)/pytest -q -m "not slow"

chaos: install services ## every chaos scenario (kills brokers, databases, workers), then the table
	@bash scripts/chaos

bench: install services ## throughput, latency, RSS vs the bare floor (BENCH_N, BENCH_ARGS=--large)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

soak: install services ## a 1,000,000-account run watched for leaks (SOAK_N, SOAK_ARGS) -> docs/scaling.md
	$(PY) -m bench.soak --n $(or $(SOAK_N),1000000) $(SOAK_ARGS)

screenshots: install services ## regenerate docs/screenshots/*.png with the dashboard's browser tests
	BILLQ_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/browser

dashboard: install services ## serve the dashboard on http://127.0.0.1:8080
	$(BIN)/billq dashboard

test-unit: install ## only the tests that need no services
	$(BIN)/pytest -q -m unit

ci: install services ## what CI runs after installing: lint, typecheck, dependencies, then the tests
	$(MAKE) lint typecheck deps
	$(MAKE) test

lint: install ## ruff and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install ## mypy --strict on the packages, then on the tests
	$(BIN)/mypy
	@# Test modules import their helpers by bare name (pytest's pythonpath); the chaos and tls
	@# folders have their own conftest and helpers, so each is checked in a run of its own.
	MYPYPATH=tests $(BIN)/mypy --explicit-package-bases tests --exclude 'tests/(chaos|tls)/'
	MYPYPATH=tests:tests/chaos $(BIN)/mypy tests/chaos
	MYPYPATH=tests:tests/chaos:tests/tls $(BIN)/mypy tests/tls

deps: install ## declared dependencies match the imports (deptry)
	$(BIN)/deptry .

fmt: install ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: install ## apply migrations to BILLQ_DATABASE_URL
	$(BIN)/billq migrate

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
