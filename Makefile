# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint unit install bench bench-balancing clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polytask demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint unit

bench: $(STAMP)
	$(BIN)/python benchmarks/run_tables.py
	$(BIN)/python benchmarks/run_throughput.py

# Hours on a 2-core machine: the cost of every balancing method, then its quality on Tox21/QM8.
bench-balancing: $(STAMP)
	$(BIN)/python benchmarks/run_balancing_cost.py
	$(BIN)/python benchmarks/run_balancing_quality.py --datasets tox21 qm8 --set qm8:train.epochs=10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
