# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint dev benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/ragfresh run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/pytest

dev: install
	$(BIN)/ragfresh dev $(if $(SERVE),--serve $(SERVE))

benchmark: install
	$(BIN)/python benchmarks/refresh.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/edit_to_served.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf .ragfresh
