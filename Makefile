# The two commands: `make demo` and `make test`. Both create .venv when missing and install into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline by design: nothing here may reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
# Extra arguments, e.g. `make test PYTEST_ARGS=tests/test_cli.py` or `make demo DEMO_ARGS='--output_dir /tmp/demo'`.
DEMO_ARGS ?=
PYTEST_ARGS ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check
PIP_INSTALL := $(PIP) install -q --progress-bar off

.PHONY: install demo test test-slow lint bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch resolves to a multi-GB CUDA build.
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -c constraints.txt -e ".[dev,quant]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hf-immunize demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check hf_immunize scripts tests benchmarks
	$(BIN)/ruff format --check hf_immunize scripts tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info outputs
