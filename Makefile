# Every target installs what it needs on first use (a .venv with Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data test demo bench eval training lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install normgrad (editable) with every extra and the dev tools

data:  ## Fashion-MNIST for `normgrad eval training`: Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist)
	@if [ -f $(DATA)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is in $(DATA)"; \
	elif command -v apt-get >/dev/null; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "no apt-get here: put the four Fashion-MNIST IDX files in a folder and pass --data DIR (or set NORMGRAD_FASHION_MNIST)"; exit 1; fi

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

training: $(STAMP) data  ## the training-impact study (docs/training.md): trains a CNN, per-image study, ROAR/KAR; about an hour
	$(BIN)/normgrad eval training --out docs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) normgrad-demo .pytest_cache .ruff_cache
