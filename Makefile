# `make demo` and `make test` set up on first use: a virtual environment in .venv (unless one is
# active), with the project installed in editable mode.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PYTHON := $(VENV)/bin/python
# tests and the runs they start write no __pycache__ into the checkout
export PYTHONDONTWRITEBYTECODE := 1
STAMP := $(VENV)/.vitcls-installed

.PHONY: setup demo test test-all lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(PYTHON) train.py experiment=demo

test: setup
	$(PYTHON) -m pytest -q -m "not slow"

test-all: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(PYTHON) -m ruff check .

format: setup
	$(PYTHON) -m ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
