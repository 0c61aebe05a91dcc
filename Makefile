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
	@# the rest with uv (seconds where pip takes about a minute); torch stays pip's pinned build
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'
	@# bytecode, as pip writes it, for what uv installed, on every core (a few files written for
	@# newer Pythons do not compile: they only go without bytecode)
	$(BIN)/python -m compileall -q -j 0 -x '/site-packages/(torch|nvidia|triton)/' $(VENV)/lib > /dev/null 2>&1 || true
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
