# Two commands on a fresh machine: `make run` (serve the app) and `make test` (run the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint install install-dev install-scale ray-up ray-down clean
RAY_SERVE_PORT ?= 8000

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.scale: requirements-scale.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-scale.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements-scale.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev
install-scale: $(VENV)/.scale

# MALLOC_ARENA_MAX=2: glibc's per-thread arenas otherwise grow RSS under concurrent load (bench/load.py:
# +10.8% after warm-up without it, +3.5% with it).
run: install
	MALLOC_ARENA_MAX=2 $(PY) app.py

test: install-dev
	$(PY) -m ruff check .
	$(PY) -m pytest

# Scale out: a local Ray head on 127.0.0.1 with serve_config.yaml deployed on RAY_SERVE_PORT (see README "Scale out").
ray-up: install-scale
	MALLOC_ARENA_MAX=2 $(PY) scale_out.py up --port $(RAY_SERVE_PORT)

ray-down:
	$(PY) scale_out.py down

lint: install-dev
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
