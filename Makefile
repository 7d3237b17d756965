# resdepth: every target bootstraps the .venv it needs (python3 -m venv; pip install -e '.[dev]').
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= cifar10
ROOT ?= runs
DEMO_ROOT ?= runs-demo
ARGS ?=

.PHONY: help test reproduce demo bench clean
help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) (cifar10 | cifar10_jpeg offline | cifar100 | fashion_mnist | synthetic), ROOT=$(ROOT), ARGS='extra overrides'"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: $(VENV)/.installed  ## run the test suite (about 7 minutes on 2 CPU cores)
	$(BIN)/python -m pytest -q

reproduce: $(VENV)/.installed  ## the paper's sweep (5 depths x plain/residual, 64k iterations), its table and figures
	$(BIN)/resdepth sweep experiment=paper data=$(DATA) results_root=$(ROOT) $(ARGS)
	$(BIN)/resdepth plot $(ROOT)

demo: $(VENV)/.installed  ## degradation on real CIFAR-10 images on a CPU (20-30 min on 2 cores)
	@if [ -z "$(DEMO_DATA)" ]; then \
	  if [ -f data/cifar-10-batches-py/data_batch_1 ]; then d=cifar10; why="data/cifar-10-batches-py found"; \
	  else d=cifar10_jpeg; why="no data/cifar-10-batches-py here, so the JPEG copy of CIFAR-10 in ../shared/data"; fi; \
	else d=$(DEMO_DATA); why="DEMO_DATA=$(DEMO_DATA)"; fi; \
	echo "demo dataset: $$d ($$why)"; \
	echo "demo: plain/residual x depth 20/56, 1000 iterations each; expect 20-30 min on 2 cores (20 with native bf16)"; \
	$(BIN)/resdepth sweep experiment=demo data=$$d results_root=$(DEMO_ROOT) $(ARGS) && \
	$(BIN)/resdepth plot $(DEMO_ROOT)

bench: $(VENV)/.installed  ## speed: our training path vs a minimal loop vs the usual DataLoader pipeline
	$(BIN)/resdepth bench $(ARGS)

clean:  ## remove the venv and caches (never results)
	rm -rf $(VENV) .pytest_cache *.egg-info
