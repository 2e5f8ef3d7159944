# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# SkyPilot pins click<8.2 while huggingface_hub 2 (diffusers) needs click>=8.2: it cannot share our
# environment, so the tests parse generated tasks with SkyPilot from its own (as users run `sky` from theirs).
SKY_VENV ?= .venv-sky
SKY_STAMP := $(SKY_VENV)/.installed
EXTRAS ?= dev,ui,quantization,optimizers,wandb,experiments
# The tests' demo model and dataset: kept between runs (folders named by the code that builds them).
TEST_HOME ?= $(HOME)/.cache/flux2-lora-test

.PHONY: demo test lint install clean-demo browser screenshots

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

$(SKY_STAMP):
	python3 -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q "skypilot==0.14.1"
	touch $(SKY_STAMP)

install: $(STAMP)

# Train the quickstart LoRA on the embedded demo model (CPU: ~110 s the first time, which teaches and caches the demo model; ~42 s after).
demo: $(STAMP)
	$(VENV)/bin/flux2-lora train --preset quickstart

# Chromium for the browser tests (the same script CI runs; it does nothing when Chromium is there).
browser:
	sh scripts/install_browser.sh

# The demo model is taught its world once (about a minute on an idle CPU, several on a loaded one),
# here, outside every test's 10-minute limit, and reused by the test runs after.
DEMO_MODEL := FLUX2_LORA_HOME=$(TEST_HOME) $(PY) -c \
	"from flux2_lora.training.demo_model import ensure_demo_model as e; print('demo model:', e())"

test: $(STAMP) $(SKY_STAMP) browser
	$(DEMO_MODEL)
	FLUX2_LORA_TEST_HOME=$(TEST_HOME) FLUX2_SKY_PYTHON=$(abspath $(SKY_VENV))/bin/python $(PY) -m pytest -q

# The README's pictures: the browser tests, writing their screenshots into docs/screenshots (tests
# alone write them to the ignored .screenshots/, so `make test` leaves the tree as it was).
screenshots: $(STAMP) browser
	$(DEMO_MODEL)
	FLUX2_LORA_TEST_HOME=$(TEST_HOME) FLUX2_SCREENSHOTS=$(abspath docs/screenshots) \
		$(PY) -m pytest -q -m browser tests/webui

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
