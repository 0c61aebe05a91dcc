# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test lint demo quickstart clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check lpclip_cache tests benchmarks pipelines

demo: setup
	$(BIN)/lpclip-cache demo --out demo-out --overwrite

quickstart: setup
	PATH="$(abspath $(BIN)):$$PATH" bash pipelines/cifar10_quickstart.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
