# `make run`: the service on the embedded SQLite store (HOST, PORT to change where). `make test`: lint, types and the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint chromium bench bench-lineage bench-mongo schemas docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/catalog init
	$(BIN)/catalog serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's chromium; as root on Debian it is installed when missing
# (elsewhere the tests skip with a message, and fail under CI=true).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || true

test: $(VENV)/.test-installed chromium
	$(BIN)/ruff check catalog tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The quick benchmarks, each a JSON document with its ratio to a baseline of the same run.
bench: $(VENV)/.test-installed
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/webhooks.py --rounds 3
	$(BIN)/python bench/fixity.py
	$(BIN)/python bench/work_queue.py

# Lineage and checksum lookups at 10,000 and 1,000,000 files (the large load takes minutes).
bench-lineage: $(VENV)/.run-installed
	$(BIN)/python bench/lineage.py

# The jobs and webhook benchmarks on SQLite and on a MongoDB-wire server, side by side.
bench-mongo: $(VENV)/.test-installed
	$(BIN)/python bench/store_mongo.py

# Regenerate what the docs tests keep current.
schemas: $(VENV)/.run-installed
	$(BIN)/python -c "from pathlib import Path; from catalog.models import write_schemas; write_schemas(Path('schemas'))"

docs: $(VENV)/.run-installed
	$(BIN)/python -m catalog.docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
