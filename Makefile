# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint unit install bench bench-balancing clean

# The example plug-in of docs/extending.md, installed beside polytask: tests/test_plugins.py
# trains with the components its entry points register.
PLUGIN := tests/plugins/polytask_example_plugin

# `make demo` installs the core package only, so a newcomer's first run stays quick; `make test`
# adds the extras and dev tools.
CORE_STAMP := $(VENV)/.core-stamp

$(CORE_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(CORE_STAMP)

$(STAMP): pyproject.toml constraints.txt $(PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps -e $(PLUGIN)
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE_STAMP)
	$(BIN)/polytask demo

# tools/check_layers.py: no import up a layer, no cycle between files, no polytask import
# inside a function body outside cli.py (docs/architecture.md, "Layers").
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/python tools/check_layers.py

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

# About 20-35 minutes on a 2-core machine (33 measured while other jobs shared it): single-task
# vs shared-bottom vs MMoE vs CGC/PLE on Census-Income, 3 seeds (needs the shared census data).
.PHONY: bench-census
bench-census: $(STAMP)
	$(BIN)/python benchmarks/run_census_architectures.py --workers 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# 25-40 minutes on a 2-core machine (41 min measured with other jobs running): spoken digit +
# speaker on FSDD, single-task vs hard sharing vs MMoE, 3 seeds (needs the fsdd data, audio extra).
.PHONY: bench-speech
bench-speech: $(STAMP)
	$(BIN)/python benchmarks/run_fsdd.py --workers 2

# About 30-40 minutes on a 2-core machine: FDU-MTL sentiment, 16 single-domain nets vs one
# multi-task net (fastText-style encoder from scratch) and the frozen MiniLM variant, 3 seeds
# (needs the shared fdu-mtl data and the text extra).
.PHONY: bench-text
bench-text: $(STAMP)
	$(BIN)/python benchmarks/run_fdu_mtl.py --workers 2

# At most ~40 minutes on a 2-core machine running nothing else (longer while other jobs share
# it): single-task nets vs hard sharing vs MTAN vs soft sharing vs MMoE on MultiMNIST (left
# digit, right digit, segmentation), 3 seeds (needs the shared MNIST test files).
.PHONY: bench-vision
bench-vision: $(STAMP)
	$(BIN)/python benchmarks/run_multimnist.py --workers 2

# About 45 minutes on a 2-core machine: tasks with unequal data. MNIST digits 6000/600/60 under
# five samplers vs single-task nets (~20 min), then FDU-MTL as 16 sources under seven samplers
# at the release's sizes and at sizes from 1,400 down to 50 (~25-45 min), 3 seeds each.
.PHONY: bench-sampling
bench-sampling: $(STAMP)
	$(BIN)/python benchmarks/run_unequal_mnist.py --workers 2
	$(BIN)/python benchmarks/run_fdu_sampling.py --workers 2

# About 10 minutes and 4.5 GB of disk (benchmarks/.cache): one epoch over a 20-million-row
# Parquet table streamed with bounded memory, and streamed vs in-memory rows/s on 2 million rows.
.PHONY: bench-streaming
bench-streaming: $(STAMP)
	$(BIN)/python benchmarks/run_streaming.py

# About 30-45 minutes on a 2-core machine running nothing else (estimated from the smoke run and
# earlier benchmarks, not yet measured end to end): polytask compare on Census-Income (training
# fractions 0.1-1.0) and Tox21 (0.25, 1.0), single-task nets vs hard sharing (equal weights,
# uncertainty, DB-MTL) and MMoE, 5 seeds, the two datasets in parallel on one thread each.
# Resumable (benchmarks/.cache/compare, ~1 GB): rerun after an interruption to continue.
.PHONY: bench-compare
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/run_compare.py --workers 2

# About 15-25 minutes on a 2-core machine (estimated): lookahead task affinity against ground
# truth (synthetic tasks of known correlation, exhaustive pair search) and on Tox21's 12 tasks,
# whose suggested groups are trained against one all-task model and 12 single-task nets, 3 seeds.
.PHONY: bench-affinity
bench-affinity: $(STAMP)
	$(BIN)/python benchmarks/run_affinity.py --workers 2
