# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The browser tests drive Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser build of its own).
CHROMIUM := /usr/bin/chromium
# The end-to-end test runs the Dagster instance of deploy/dagster.yaml on Debian's PostgreSQL
# server, which it starts itself (tests/postgres.py); the version is part of the path.
POSTGRES := /usr/lib/postgresql/*/bin/postgres
# The Ray test lists the sockets its local cluster listens on with iproute2's `ss`.
SS := /usr/bin/ss

.PHONY: install browser postgresql run test lint dev benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Installed once: the file itself is the stamp, so a repeated `make test` skips this.
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "error: $(CHROMIUM) is missing; the browser tests need Debian's chromium:" \
			"run 'sudo apt-get install chromium' (or 'make browser' as root)" >&2; \
		exit 1; \
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

browser: $(CHROMIUM)

$(SS):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "error: $(SS) is missing; the Ray test needs Debian's iproute2:" \
			"run 'sudo apt-get install iproute2' (or 'make $(SS)' as root)" >&2; \
		exit 1; \
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2

postgresql:
	@if ls $(POSTGRES) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "error: $(POSTGRES) is missing; the end-to-end test needs Debian's postgresql:" \
			"run 'sudo apt-get install postgresql' (or 'make postgresql' as root)" >&2; \
		exit 1; \
	fi; \
	set -ex; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

run: install
	$(BIN)/policyfresh run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser postgresql $(SS)
	$(BIN)/dg check defs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest

dev: install
	$(BIN)/policyfresh dev $(if $(SERVE),--serve $(SERVE))

benchmark: install
	$(BIN)/python benchmarks/refresh.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/edit_to_served.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf .policyfresh
