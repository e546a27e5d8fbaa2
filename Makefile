# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first and pinned: letting pip pick torch freely pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install install-dev bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/metakit quickstart

test: install-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks print tables; figures and commands are recorded in docs/benchmarks.md.
bench: install
	$(PY) benchmarks/maml_throughput.py
	$(PY) benchmarks/sinusoid_maml.py --steps 6000 --threads 2

clean:
	rm -rf $(VENV) build dist src/*.egg-info
