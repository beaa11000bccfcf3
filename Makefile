# HealthSync: `make demo` runs the whole thing on SQLite; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two test processes by default (pytest-xdist); override, e.g. `make test PYTEST_ARGS="-x -m 'not slow'"`.
PYTEST_ARGS ?= -n auto
# e.g. `make demo DEMO_ARGS="--port-web 8080 --rate 5"`
DEMO_ARGS ?=
# e.g. `make bench DATABASE_URL=postgres://... BENCH_ARGS="--seconds 20 --listener-processes 2"`
BENCH_ARGS ?=

.PHONY: install demo test bench lint format clean browser

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ not found: install it or run make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is older than 3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) manage.py demo $(DEMO_ARGS)

# Browser tests drive Debian's Chromium with Playwright (never a downloaded browser); as root, install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not found: the browser tests will be skipped (apt-get install chromium)"; }

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) manage.py benchmark $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
