# Two entry points for a fresh machine with only Python 3.11+ and make:
#   make demo   sets everything up and runs the system on the embedded defaults
#   make test   sets everything up and runs the whole test suite (what CI runs)
# Everything is installed from uv.lock into .venv, so every install is the same.

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

# Most of the suite's time is spent waiting on real servers and processes, not computing:
# four workers on two cores, one test module per worker (module-scoped servers are
# started once), longest modules first (tests/scheduling.py). `make test PYTEST_PARALLEL=`
# runs it serially. Wall time and CPU: docs/benchmarks.md ("Test suite wall time").
PYTEST_PARALLEL ?= -n 4 --dist loadfile

.PHONY: setup browser demo test lint bench screenshots clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --quiet --compile-bytecode
	touch $@

# The project's own modules compiled too: with PYTHONDONTWRITEBYTECODE=1 (this host, CI)
# every command would otherwise compile them again at each start (issue 14: instant
# commands). Cheap when up to date; the caches are ignored by git.
setup: $(VENV)/.synced
	@env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python -m compileall -q db flows powerwatch schemas tasks >/dev/null

demo: setup
	$(VENV)/bin/powerwatch demo

# Headless Chromium for the UI check of the end-to-end tests (Debian's package; as root
# only). Without it that one test is skipped with its reason; nothing else needs it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }; } \
	  || echo "chromium not installed: the UI screenshot test will be skipped"

# The layering of the packages (docs/design.md, "Map") is checked by `lint-imports`
# (import-linter; the contract is in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports --no-cache

test: setup browser lint
	$(VENV)/bin/pytest $(PYTEST_PARALLEL)

# The benchmarks add pandas (the `to_sql` baseline); the next `make setup` takes it away.
bench: setup
	$(UV) sync --locked --quiet --compile-bytecode --group baselines
	rm -f $(VENV)/.synced
	$(VENV)/bin/python -m bench.run_all

# docs/ui-*.png: every job's artifact in the UI at 1,440 px (needs chromium: make browser)
screenshots: setup browser
	$(VENV)/bin/python docs/ui_screenshots.py

clean:
	rm -rf .tools $(VENV) .venv-deployed .pytest_cache .mypy_cache .ruff_cache .grimp_cache .import_linter_cache
