# Every target installs what it needs on first use (a .venv with Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench eval lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install normgrad (editable) with every extra and the dev tools

test: $(STAMP)  ## lint, then run the test suite
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q

demo: $(STAMP)  ## the main job: compare and explain real photos with the embedded pretrained model
	$(BIN)/normgrad demo

bench: $(STAMP)  ## speed and memory benchmarks (ratios, one process per table)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_meta.py
	$(BIN)/python benchmarks/bench_suite.py

eval: $(STAMP)  ## the evaluation report on real photos (docs/results.md), about 8 minutes
	$(BIN)/normgrad eval report --out docs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) normgrad-demo .pytest_cache .ruff_cache
