# Every target works on a fresh clone with only Python >= 3.10 and make:
# the first one that needs it creates .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-memory test-postgres lint format typecheck bench mutate demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Deliberate bugs in the state machines, one at a time: do the tests catch each? (minutes)
mutate: install
	$(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

demo: install
	$(BIN)/resilient-circuit-cli demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
