# `make demo` and `make test` create .venv when it is missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint docs bench gpu-check browser-check clean

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

# the mask explorer in a real browser (after `make demo`): JupyterLab on 127.0.0.1, headless Chromium
# (Debian's `chromium`), every cell of notebooks/mask_explorer.ipynb run; screenshot in reports/browser-check/
browser-check: $(STAMP)
	$(BIN)/pip install -q playwright
	$(BIN)/python tools/browser_check.py

# the documentation site (docs/ and results/) into site/; the docs extra is not needed by `make test`
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/ablate bench

# on a machine with a GPU: device tests on CUDA, every preset benched, a 2-worker study, an analysis, costs.
# A GPU node without network (docs/clusters.md) cannot build .venv: with wheelhouse/ in the checkout, its
# wheels go into wheelhouse/site once and the node's own python3 (which holds PyTorch) runs the check.
GPU_OUT ?= runs/gpu-check
gpu-check:
	@if ls wheelhouse/*.whl >/dev/null 2>&1; then \
	  test -f wheelhouse/site/.installed || { $(PY) -m pip install -q --no-index --no-deps --no-compile \
	    --target wheelhouse/site wheelhouse/*.whl && touch wheelhouse/site/.installed; } || exit 1; \
	  echo "PYTHONPATH=wheelhouse/site:. $(PY) -m ablate doctor --device cuda --out $(GPU_OUT)"; \
	  PYTHONPATH=wheelhouse/site:. $(PY) -m ablate doctor --device cuda --out $(GPU_OUT); \
	else \
	  $(MAKE) --no-print-directory $(STAMP) && $(BIN)/ablate doctor --device cuda --out $(GPU_OUT); \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
