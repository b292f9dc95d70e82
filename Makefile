# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
# found once (`:=`), quietly: a pyenv shim answers `command -v` for versions it cannot run
ifndef PYTHON
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_DATABASE_URL ?= postgresql://postgres:postgres@127.0.0.1:5432/postgres

.PHONY: demo test dev down status bench lint install

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)  ## run the whole platform once on the embedded Postgres and leave it answering
	$(BIN)/mdp demo

test: $(STAMP)  ## the test suite (against MDP_TEST_DATABASE_URL, default the local TCP Postgres)
	$(BIN)/ruff check .
	MDP_TEST_DATABASE_URL=$${MDP_TEST_DATABASE_URL:-$(TEST_DATABASE_URL)} $(BIN)/pytest -q

dev: $(STAMP)  ## Dagster UI + daemon over the same stack
	$(BIN)/mdp dev

down: $(STAMP)  ## stop the local stack
	$(BIN)/mdp stack down

status: $(STAMP)
	$(BIN)/mdp stack status

bench: $(STAMP)  ## benchmarks: figures and ratios against baselines (BENCH_ARGS="--quick" etc.)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
