# Hashgrid: `make run` starts everything for a demo; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format typecheck clean

$(STAMP): pyproject.toml package-lock.json
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Hashgrid needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# Browser libraries the app serves itself (chart.js): npm from Debian when missing.
	command -v npm >/dev/null || bash devtools/provision.sh npm
	npm ci --omit=dev --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m devtools.devrun

# Chromium and Redis come from Debian (devtools/provision.sh); Python packages from pip,
# the browser libraries the app serves (package.json) from npm.
# Two pytest-xdist workers, one per core, each test file on one worker (its fixtures with it).
PYTEST_WORKERS ?= 2
test: install
	bash devtools/provision.sh
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy .

clean:
	-$(BIN)/python -m devtools.devdb stop
	rm -rf .run
