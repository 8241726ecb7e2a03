# Two commands on a fresh machine with nothing but python3:
#   make run    the service on the embedded default (SQLite, in-process broker and cache, http://127.0.0.1:8000)
#   make test   lint, format check, strict typing, every test, and the per-file coverage gate
# Both bootstrap a virtual environment from the lock file first.

PYTHON ?= python3
VENV := .venv
BOOTSTRAP := .cache/bootstrap
UV := $(BOOTSTRAP)/bin/uv
UV_VERSION := 0.13.9
COVERAGE_MIN ?= 90
PYTEST_ARGS ?=

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: install run test lint typecheck pytest coverage-gate deploy-check clean

$(UV):
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --locked --compile-bytecode --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/library-api serve

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

# Bytecode is written up front: every server process a test starts imports the package afresh, and an
# environment with PYTHONDONTWRITEBYTECODE set would otherwise compile it again each time.
pytest: install
	$(VENV)/bin/python -m compileall -q src/library_api
	$(VENV)/bin/coverage erase
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage combine --quiet
	$(VENV)/bin/coverage report

coverage-gate: install
	$(VENV)/bin/coverage json --quiet -o .cache/coverage.json
	$(VENV)/bin/python scripts/coverage_gate.py .cache/coverage.json --min $(COVERAGE_MIN)

test: lint typecheck pytest coverage-gate

# The deployment kit alone (Dockerfile, Compose, nginx, Prometheus, Alertmanager, Grafana, Kubernetes, scripts, and the
# end-to-end stack and monitoring). `make test` runs these too, as part of the whole suite.
deploy-check: install
	$(VENV)/bin/pytest tests/deploy tests/e2e/test_deploy_stack.py tests/e2e/test_monitoring_stack.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache
