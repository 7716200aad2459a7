# `make demo` and `make test` create .venv when it is missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned to the builds this machine holds on disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ablate demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check resmasknet ablate tests
	$(BIN)/mypy resmasknet ablate

bench: $(STAMP)
	$(BIN)/ablate bench

# on a machine with a GPU: device tests on CUDA, every preset benched, a 2-worker study, an analysis, costs
gpu-check: $(STAMP)
	$(BIN)/ablate doctor --device cuda --out runs/gpu-check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
