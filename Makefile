# nightlab: `make run` sets up and runs the demo research session; `make test` runs the tests.
#
# torch: on a machine with an NVIDIA driver (nvidia-smi on PATH) pip takes the default CUDA
# build; elsewhere we ask for torch==2.13.0, which CI machines serve as a local CPU wheel.
# A CPU-only machine of your own can avoid the CUDA download with
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAVE_GPU),torch>=2.4,torch==2.13.0)
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# Test processes: one per core, at most 4 (each test may train with every core itself). The
# suite takes 15–20 minutes on a 2-core machine this way, 27 in one process (docs/BENCHMARKS.md).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ "$$n" -gt 4 ] && n=4; echo $$n)
# The browser tests (tests/report/test_dashboard_browser.py) drive Debian's chromium through
# Playwright's Python package; nothing here ever downloads a browser build.
CHROMIUM ?= /usr/bin/chromium
export NIGHTLAB_CHROMIUM := $(CHROMIUM)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: install run test test-fast browsers lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/nightlab demo

test: install browsers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Says which browser the browser tests use, or plainly that they will be skipped.
browsers:
	@if [ -x "$(CHROMIUM)" ]; then echo "browser tests: $$($(CHROMIUM) --version 2>/dev/null | head -1) at $(CHROMIUM)"; \
	else echo "browser tests: SKIPPED, no chromium at $(CHROMIUM) (apt-get install chromium, or make CHROMIUM=/path)"; fi

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
