# resdepth: every target bootstraps the .venv it needs (python3 -m venv; pip install -e '.[dev]', compat mode).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
CIFAR10_JPEG ?= ../shared/data/cifar10-jpeg.tar.gz
ROOT ?= runs
DEMO_ROOT ?= runs-demo
ARGS ?=

DEST ?=
BUDGET ?= 8m
# The dataset of reproduce, demo and gpu-check: DATA if given, else CIFAR-10 in data/, else downloaded, else the JPEG copy
PICK_DATA = scripts/dataset.sh "$(DATA)" "$(CIFAR10_JPEG)" $(BIN)/python

.PHONY: help test reproduce demo bench gpu-check clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: DATA (default: CIFAR-10 from data/ or downloaded, else the JPEG copy CIFAR10_JPEG=$(CIFAR10_JPEG);"
	@echo "             or cifar10 | cifar10_jpeg | cifar100 | fashion_mnist | synthetic), ROOT=$(ROOT), DEST and BUDGET=$(BUDGET) (gpu-check), ARGS='extra overrides'"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat: Hydra finds resdepth's SLURM launcher in hydra_plugins/ only on a plain path entry
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

test: $(VENV)/.installed  ## run the test suite (about 20-24 minutes on 2 CPU cores)
	$(BIN)/python -m pytest -q

reproduce: $(VENV)/.installed  ## the paper's sweep (5 depths x plain/residual, 64k iterations), its table and figures
	d=$$($(PICK_DATA)) && \
	$(BIN)/resdepth sweep experiment=paper $$d results_root=$(ROOT) $(ARGS) && \
	$(BIN)/resdepth plot $(ROOT)

# The demo's 4 runs go as many at once as there are cores (at most 4), one CPU thread each: on 2 cores
# 2 runs at once give 1.86x the images/s of one, one run on both cores 1.61x (docs/sweeps.md#cpu-threads).
demo: $(VENV)/.installed  ## degradation on real CIFAR-10 images on a CPU (about 23 min on 2 cores)
	@d=$$($(PICK_DATA)) && n=$$(nproc) && n=$$(( n < 4 ? n : 4 )) && \
	echo "demo: plain/residual x depth 20/56, 1000 iterations each, $$n at once; expect about 23 min on 2 cores" && \
	$(BIN)/resdepth sweep experiment=demo $$d results_root=$(DEMO_ROOT) hydra/launcher=parallel \
		hydra.launcher.n_jobs=$$n $(ARGS) && \
	$(BIN)/resdepth plot $(DEMO_ROOT)

bench: $(VENV)/.installed  ## speed: our training path vs a minimal loop vs the usual DataLoader pipeline
	$(BIN)/resdepth bench $(ARGS)

gpu-check: $(VENV)/.installed  ## on a CUDA GPU: CUDA tests, a short bench, BUDGET more of the paper's schedule in DEST
	@test -n "$(DEST)" || { echo "make gpu-check DEST=folder: name the folder for its outputs"; exit 2; }
	d=$$($(PICK_DATA)) && BUDGET=$(BUDGET) PY=$(BIN)/python scripts/gpu-check.sh "$(DEST)" $$d $(ARGS)

clean:  ## remove the venv and caches (never results)
	rm -rf $(VENV) .pytest_cache *.egg-info
