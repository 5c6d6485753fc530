# Every target installs what it needs on first use (a .venv with Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install browser test demo bench eval lint screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install normgrad (editable) with every extra and the dev tools

browser:  ## headless Chromium and its driver for the browser tests (Debian's chromium, chromium-driver; about 40 s once)
	@if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium and chromium-driver for the browser tests (apt-get)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null 2>&1 && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "WARNING: could not install chromium and chromium-driver: the browser tests will FAIL (they need both)"; \
	fi

test: $(STAMP) browser  ## lint, then run the test suite (browser tests included: they fail if Chromium is missing)
	$(BIN)/ruff check src tests benchmarks examples tools
	NORMGRAD_BROWSER_TESTS=required $(BIN)/python -m pytest -q

demo: $(STAMP)  ## the main job: compare and explain real photos with the embedded pretrained model (gallery included)
	$(BIN)/normgrad demo
	@echo "open normgrad-demo/explain/index.html in a browser for the gallery; $(BIN)/normgrad serve for the explorer"

screenshots: $(STAMP) browser  ## docs/gallery.png and docs/explorer.png, taken in headless Chromium from real runs
	$(BIN)/python tools/screenshots.py

bench: $(STAMP)  ## speed and memory benchmarks (ratios, one process per table)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_meta.py
	$(BIN)/python benchmarks/bench_suite.py

eval: $(STAMP)  ## the evaluation report on real photos (docs/results.md), about 8 minutes
	$(BIN)/normgrad eval report --out docs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

clean:
	rm -rf $(VENV) normgrad-demo .pytest_cache .ruff_cache
