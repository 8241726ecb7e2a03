# Two commands on a fresh machine with nothing but python3:
#   make run    the service on the embedded default (SQLite, in-process broker and cache, http://127.0.0.1:8000)
#   make test   lint, format check, strict typing, every test, and the per-file coverage gate
# Both bootstrap a virtual environment from the lock file first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BOOTSTRAP := .cache/bootstrap
UV := $(BOOTSTRAP)/bin/uv
UV_VERSION := 0.13.9
# Fixed: neither the environment nor the command line can lower it (scripts/coverage_gate.py refuses below 90 too).
override COVERAGE_MIN := 90
# Tests run in parallel (docs/testing.md): PYTEST_WORKERS xdist workers, each test module on one worker (its
# module-scoped servers start once), modules handed out in collection order (tests/conftest.py puts the ones that
# start processes first). PYTEST_WORKERS=0 runs everything in this one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
PYTEST_LOG := .cache/pytest.log
# A run that goes past this is ended, so that a hang fails in minutes and not at CI's limit: a hung test is ended by
# its own timeout or, failing that, by tests/support/hard_timeout.py, whose stacks the pytest target prints.
PYTEST_WALL_LIMIT ?= 60m
# Every test's time, for scripts/durations_by_layer.py (docs/testing.md, "Where the time goes").
JUNIT_XML := .cache/junit.xml
# pytest's closing line, with or without -q: "=== 3 passed, 1 skipped in 9.10s ===", "no tests ran in 0.50s"
SUMMARY_LINE := ^(=+ )?(no tests ran|[0-9]+ [a-z]+(, [0-9]+ [a-z]+)*) in [0-9.]+s( \([0-9:]+\))?( =+)?$$

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: install run test lint typecheck pytest coverage-gate pytest-summary deploy-check clean

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
# Coverage measures the xdist workers and every server they start (pyproject: patch = ["subprocess"]); each
# process writes a data file of its own, combined afterwards. pytest's output is kept in $(PYTEST_LOG).
pytest: install
	$(VENV)/bin/python -m compileall -q src/library_api
	$(VENV)/bin/coverage erase
	@mkdir -p .cache && rm -rf $(PYTEST_LOG) .cache/hung-tests
	set -o pipefail; status=0; \
	timeout --kill-after=60 $(PYTEST_WALL_LIMIT) \
		$(VENV)/bin/coverage run -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--junitxml=$(JUNIT_XML) $(PYTEST_ARGS) 2>&1 | tee $(PYTEST_LOG) || status=$$?; \
	for log in .cache/hung-tests/*/*.log; do if [ -s "$$log" ]; then echo "== $$log"; cat "$$log"; fi; done; \
	if [ $$status -eq 124 ]; then echo "pytest was ended after PYTEST_WALL_LIMIT=$(PYTEST_WALL_LIMIT)"; fi; \
	exit $$status
	$(VENV)/bin/coverage combine --quiet
	$(VENV)/bin/coverage report

coverage-gate: install
	$(VENV)/bin/coverage json --quiet -o .cache/coverage.json
	$(VENV)/bin/python scripts/coverage_gate.py .cache/coverage.json --min $(COVERAGE_MIN)

# The coverage report and gate print after pytest; pytest's summary line is printed again as the very last line,
# which is what a reader (or CI) of the closing lines looks at. A failing run still exits non-zero, and so does a
# run that collected no tests (pytest's exit code 5).
test: lint typecheck
	@status=0; \
	$(MAKE) --no-print-directory pytest || status=$$?; \
	if [ $$status -eq 0 ]; then $(MAKE) --no-print-directory coverage-gate || status=$$?; fi; \
	$(MAKE) --no-print-directory -s pytest-summary; \
	exit $$status

# pytest's summary line from the last run (.ci/run prints it again after make's own closing lines).
pytest-summary:
	@summary=$$(grep -E '$(SUMMARY_LINE)' $(PYTEST_LOG) 2>/dev/null | tail -n 1); \
	echo "$${summary:-pytest printed no summary line (it did not run to the end)}"

# The deployment kit alone (Dockerfile, Compose, nginx, Prometheus, Alertmanager, Grafana, Kubernetes, scripts, and the
# end-to-end stack and monitoring). `make test` runs these too, as part of the whole suite.
deploy-check: install
	$(VENV)/bin/pytest tests/deploy tests/e2e/test_deploy_stack.py tests/e2e/test_monitoring_stack.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache
