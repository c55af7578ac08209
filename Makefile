# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need into
# .venv first; the install is skipped while .venv/.installed is newer than the requirement files.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
CORES ?= all
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# No hub downloads, ever: the demo builds its own model. Override for real models on a GPU machine.
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint dry-run bench clean

install: $(STAMP)

# torch first: DeepSpeed builds from source against the installed torch (no build isolation).
$(STAMP): requirements/torch.txt requirements/build.txt requirements/lock.txt requirements/deepspeed.txt pyproject.toml
	bash scripts/install_system_packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet -r requirements/build.txt
	$(BIN)/pip install --quiet --no-build-isolation -r requirements/deepspeed.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)
	@echo; echo "Ablation summary (results/summary.md, chart results/summary.png):"; echo
	@cat results/summary.md
	@echo; echo "Browse every run: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow.db --host 127.0.0.1"

test: install
	$(BIN)/python -m pytest

# Costs of the last `make demo` and of the workflow's machinery; see docs/benchmarks.md.
bench: install
	$(BIN)/python benchmarks/bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n

clean:
	rm -rf results logs resources .snakemake
