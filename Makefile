# Every target works on a fresh clone with only Python >= 3.10 and make:
# the first one that needs it creates .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-memory test-postgres test-testcontainers test-pgbouncer lint format \
	typecheck docs bench mutate demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite on a PostgreSQL container started by testcontainers.
# scripts/docker-postgres.sh prepares the Docker engine and the image and prints the
# image's name: RC_TEST_IMAGE if set, else the official postgres:16-alpine if present,
# else one it builds with no registry (as root on Debian). testcontainers' reaper
# container would need a registry, so it is off; the suite stops its own container.
test-testcontainers: install
	@image="$$(scripts/docker-postgres.sh)" && \
	echo "RC_TEST_IMAGE=$$image" && \
	RC_TEST_IMAGE="$$image" RC_TEST_BACKEND=testcontainers TESTCONTAINERS_RYUK_DISABLED=true \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that run through a real PgBouncer (transaction pooling), which `make test`
# leaves out. The Debian package is installed when the binary is missing (as root);
# its system service is not left running.
test-pgbouncer: install
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer \
		&& { systemctl disable --now pgbouncer 2>/dev/null || service pgbouncer stop 2>/dev/null || true; }; }
	$(BIN)/python -m pytest -m pgbouncer $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Deliberate bugs in the state machines, one at a time: do the tests catch each? (minutes)
mutate: install
	$(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

demo: install
	$(BIN)/resilient-circuit-cli demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
