# The two entry points of README.md: `make demo` and `make test`. Both set up from scratch.
VENV ?= .venv
PIP_ENV = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null

.PHONY: setup demo test test-fast bench gpu-check
setup: $(VENV)/.installed

# The registry's torch (a CUDA build, which runs on CPU too) with its matching torchvision;
# the machine's local CPU-only torch wheel has no torchvision to match it.
$(VENV)/.installed: pyproject.toml
	bash scripts/check-disk.sh $(VENV) 9
	bash scripts/install-system-deps.sh
	python3 -m venv $(VENV)
	$(PIP_ENV) $(VENV)/bin/pip install -q --upgrade pip
	$(PIP_ENV) $(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/wsl demo --fast --workdir demo

test: setup
	$(VENV)/bin/python -m pytest -q

# The unit tier (no subprocess, no network, seconds each): the edit-test loop. `make test` runs all.
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m unit

bench: setup
	$(VENV)/bin/python bench/build.py
	$(VENV)/bin/python bench/loader.py
	$(VENV)/bin/python bench/train_step.py

# On a machine with a CUDA GPU: GPU tests, DALI decode, ResNeXt-101 bf16 img/s and MFU, NCCL DDP;
# one table, written into docs/benchmarks.md. GPU_PYTHON: an interpreter that already has torch
# with CUDA (a GPU machine without registries cannot build the venv).
GPU_PYTHON ?= $(VENV)/bin/python
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py
