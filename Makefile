# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need into
# .venv first; the install is skipped while .venv/.installed is newer than the requirement files.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
CORES ?= all
# Extra Snakemake options for demo and demo-teacher, e.g. SNAKEMAKE_ARGS="--rerun-triggers mtime" to keep
# results an older vlmflow made instead of rerunning every job whose code changed since. They come last:
# options such as --rerun-triggers and --forcerun take every word after them.
SNAKEMAKE_ARGS ?=
# The demo's configuration, laid over config/config.yaml (a real run's) by make demo, report, lint and the tests:
# config/demo.yaml, and config/demo_full.yaml over it for make demo-full.
DEMO_CONFIG ?= config/demo.yaml
RANKING := oof_weighted_f1
STAMP := $(VENV)/.installed
# make test's pytest-xdist workers: two, one per core of a small machine. Much of a test is one process
# starting (Snakemake, LLaMA-Factory's CLI, imports), which leaves the other core idle. Groups that share a
# fixture stay on one worker, the longest handed out first (tests/conftest.py). TEST_WORKERS= runs the suite
# in one process.
TEST_WORKERS ?= -n 2 --dist loadscope --no-loadscope-reorder
# The vLLM scoring backend's venv (make install-vllm; score.vllm_python points at its Python).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# No hub downloads, ever: the demo builds its own model. Override for real models on a GPU machine.
export HF_HUB_OFFLINE ?= 1

.PHONY: install install-gpu install-vllm test-system-packages demo demo-full demo-teacher report screenshots test test-fast lint dry-run plan bench sync-mlflow clean

install: $(STAMP)

# torch first: DeepSpeed builds from source against the installed torch (no build isolation). Its CPU operations
# (CPU Adam for ZeRO offload, shared-memory collectives) are compiled here rather than at a first fine-tune.
$(STAMP): requirements/torch.txt requirements/build.txt requirements/lock.txt requirements/deepspeed.txt pyproject.toml
	mkdir -p logs && date +%s > logs/install_started
	bash scripts/install_system_packages.sh font
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet -r requirements/build.txt
	$(BIN)/pip install --quiet --no-build-isolation -r requirements/deepspeed.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/build_deepspeed_ops.py
	echo $$(( $$(date +%s) - $$(cat logs/install_started) )) > $(VENV)/.install_seconds
	touch $(STAMP)

# The GPU parts for the machine this runs on (scripts/install_gpu.py): make install's venv with a CUDA torch the driver
# runs (read from nvidia-smi; on an older driver it stops and names the command to use), nvcc of torch's CUDA,
# DeepSpeed's CPU Adam built ahead, liger-kernel and flash-attn, and $(VLLM_VENV) with the CUDA vllm. DRY_RUN=1 prints
# the commands; TORCH_INDEX=<PyTorch's cuXYZ index> installs torch's build of an older CUDA; FLASH_ATTN_WHEEL=<path or
# URL> installs a prebuilt flash-attn instead of building it.
install-gpu:
	$(PYTHON) scripts/install_gpu.py --venv $(VENV) --vllm-venv $(VLLM_VENV)

# The venv of score.backend vllm: vLLM 0.32 needs torch 2.13 and transformers >= 5.16, newer than .venv
# pins, so it gets its own (about 3 minutes and 6.5 GB). torch first, then the rest pinned, then vLLM and
# LLaMA-Factory without their own requirements, then vlmflow; the requirement files say why.
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements/vllm-torch.txt requirements/vllm.txt requirements/vllm-nodeps.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -r requirements/vllm-torch.txt -c requirements/vllm.txt
	$(VLLM_VENV)/bin/pip install --quiet -r requirements/vllm.txt -c requirements/vllm-torch.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r requirements/vllm-nodeps.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

# What only the tests use (SLURM for the cluster test, Chromium for the pages); make demo needs neither.
test-system-packages:
	bash scripts/install_system_packages.sh font slurm chromium

# The first look: the demo cut to about 15 minutes of workflow on 2 cores (config/demo.yaml). The
# install's time (once per machine) and the workflow's are printed apart at the end.
demo: install
	@started=$$(date +%s); $(BIN)/snakemake --cores $(CORES) --configfile $(DEMO_CONFIG) $(SNAKEMAKE_ARGS) \
		&& echo $$(( $$(date +%s) - started )) > results/workflow_seconds
	$(BIN)/snakemake --report results/report.html --configfile $(DEMO_CONFIG)
	@echo; echo "Ablation summary (results/summary.md, chart results/summary.png):"; echo
	@cat results/summary.md
	@echo; echo "Report (summary, loss curves, confusion matrices, label review, pseudo-labels, configuration):"
	@echo "  $(CURDIR)/results/report.html"
	@echo "Browse every run: start MLflow's UI,"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow.db --host 127.0.0.1"
	@echo "then open the variants' runs, best out-of-fold weighted F1 ($(RANKING)) first:"
	@echo "  $$($(BIN)/python -m vlmflow.tracking.runs results/mlflow_experiment.json)"
	@echo "Screenshots of both: make screenshots (results/screenshots/)"
	@echo "Time: install $$(cat $(VENV)/.install_seconds 2>/dev/null || echo '?') s (once per machine), workflow $$(cat results/workflow_seconds) s (this make)"

# The larger demo (config/demo_full.yaml over config/demo.yaml): about an hour on 2 cores.
demo-full:
	$(MAKE) --no-print-directory demo DEMO_CONFIG="config/demo.yaml config/demo_full.yaml"

# The Snakemake report of the finished demo: every result marked report() with its caption. Of your own run:
# .venv/bin/snakemake --report results/report.html
report: install
	$(BIN)/snakemake --report results/report.html --configfile $(DEMO_CONFIG)

# Headless Chromium's view of the report and the MLflow UI of the finished run (Debian's chromium and
# chromium-driver; scripts/install_system_packages.sh installs them as root).
screenshots: report
	bash scripts/install_system_packages.sh chromium
	PYTHONPATH=tests $(BIN)/python -m helpers.screenshots results

# The demo with a teacher model: LLaMA-Factory's API server serves the tiny model on 127.0.0.1 for
# the run (reason and describe-then-classify variants), and stops with it. See docs/teacher.md.
demo-teacher: install
	$(BIN)/snakemake --cores $(CORES) --configfile $(DEMO_CONFIG) resources/demo/tiny-qwen2-vl $(SNAKEMAKE_ARGS)
	scripts/teacher_server.sh > logs/teacher_server.log 2>&1 & server=$$!; \
	trap "kill $$server" EXIT; \
	for i in $$(seq 120); do curl -sf http://127.0.0.1:8008/v1/models >/dev/null && break; sleep 1; done; \
	$(BIN)/snakemake --cores $(CORES) --configfile $(DEMO_CONFIG) config/teacher_demo.yaml $(SNAKEMAKE_ARGS)
	@cat results/summary.md

test: install install-vllm test-system-packages
	$(BIN)/python -m pytest $(TEST_WORKERS)

# The daily loop: library units and rule-level runs; no fine-tune, whole-workflow run, lost tracking server or page
# in a browser (under 3 minutes on 2 cores).
test-fast: install install-vllm test-system-packages
	$(BIN)/python -m pytest $(TEST_WORKERS) -m "not slow"

# Costs of the last `make demo` and of the workflow's machinery; see docs/benchmarks.md.
bench: install
	$(BIN)/python benchmarks/bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --configfile $(DEMO_CONFIG)

dry-run: install
	$(BIN)/snakemake -n

# Before a real run: its GPU jobs, the disk of its models and its estimated GPU hours (vlmflow.runtime.plan),
# e.g. make plan SNAKEMAKE_ARGS="--configfile my.yaml".
plan: install
	$(BIN)/python -m vlmflow.runtime.plan $(SNAKEMAKE_ARGS)

# After a tracking server came back: send it the fine-tunes it missed (results/mlflow-pending, see
# vlmflow.tracking.buffer). No install first: it runs where a run left its results. Fails, keeping them all,
# while the server is still down.
sync-mlflow:
	$(BIN)/python -m vlmflow.tracking.buffer results/mlflow-pending

clean:
	rm -rf results logs resources .snakemake
