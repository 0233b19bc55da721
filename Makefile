# Two commands on a fresh machine: `make run` (serve the app) and `make test` (run the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast lint install install-dev install-scale ray-up ray-down clean
RAY_SERVE_PORT ?= 8000

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
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

# the server sets glibc's malloc for a long life itself (service/memory.py; docs/responsiveness.md)
run: install
	$(PY) app.py

test: install-dev
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# the unit tier only: no server, browser or cluster (under a minute on 2 cores)
test-fast: install-dev
	$(PY) -m pytest -m unit -q

# Scale out: a local Ray head on 127.0.0.1 with deploy/serve_config.yaml deployed on RAY_SERVE_PORT (see README "Scale out").
ray-up: install-scale
	$(PY) -m deploy.scale_out up --port $(RAY_SERVE_PORT)

ray-down:
	$(PY) -m deploy.scale_out down

lint: install-dev
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
