# `make run`: the service on the embedded SQLite store (HOST, PORT to change where). `make test`: lint, types and the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint slurm chromium bench bench-lineage bench-mongo schemas docs clean docker-test-deps

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
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
		     || { apt-get update -qq >/dev/null 2>&1 \
		          && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }; } \
		|| echo "make chromium: could not install Debian's chromium: the browser tests will skip"

# Slurm and munge for tests/test_slurm.py's one-node cluster: installed as root on Debian when
# missing (quietly, idempotent); elsewhere the Slurm tests skip saying why (under CI=true, fail).
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm:
	@if command -v slurmctld >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 \
		     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null; }; } \
		|| echo "make slurm: apt-get could not install $(SLURM_PACKAGES): the Slurm tests will skip"; \
	else echo "make slurm: not root on Debian: the Slurm tests will skip"; fi

test: $(VENV)/.test-installed slurm chromium
	-$(MAKE) --no-print-directory docker-test-deps
	$(BIN)/ruff check catalog tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

# The quick benchmarks, each a JSON document with its ratio to a baseline of the same run.
bench: $(VENV)/.test-installed slurm
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/webhooks.py --rounds 3
	$(BIN)/python bench/fixity.py
	$(BIN)/python bench/work_queue.py
	$(BIN)/python bench/conditions.py
	$(BIN)/python bench/engines.py

# Lineage and checksum lookups at 10,000 and 1,000,000 files (the large load takes minutes).
bench-lineage: $(VENV)/.run-installed
	$(BIN)/python bench/lineage.py

# The jobs and webhook benchmarks on SQLite and on a MongoDB-wire server, side by side.
bench-mongo: $(VENV)/.test-installed
	$(BIN)/python bench/store_mongo.py

# Regenerate what the docs tests keep current.
schemas: $(VENV)/.run-installed
	$(BIN)/python -c "from pathlib import Path; from catalog.messages import write_schemas; write_schemas(Path('schemas'))"

docs: $(VENV)/.run-installed
	$(BIN)/python -m catalog.docs

# What the docker engine's tests start (tests/dockerimage.py): dockerd and a static busybox for
# the image they build. Installed where it can be (root on Debian); elsewhere those tests skip.
docker-test-deps:
	@if command -v dockerd >/dev/null && dpkg -s busybox-static >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 \
		     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null; }; \
	else echo "docker.io and busybox-static are not installed: the docker tests will skip"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
