# roomd — build and test plumbing (GNU make).
#   make install   .venv with roomd editable + test extras; npm packages for tests/node
#   make test      install, then the import contracts (lint-imports), mypy and pytest
#                  (pytest fails when no test is collected: it exits 5)
#   make serve     install, then `roomd serve $(ARGS)`, e.g. make serve ARGS='--port 3001'
#   make bench     install, then run the yardstick (../shared/bench) with roomd,
#                  Node.js socket.io and python-socketio (docs/performance.md)
#   make clean     remove .venv, node_modules, stamps and caches
# Stamp files make repeated runs fast; they are redone when their inputs change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NODE_DIR := tests/node
ARGS   ?=
PYTEST_ARGS ?=

PY_STAMP   := $(VENV)/.install.stamp
NODE_STAMP := $(NODE_DIR)/node_modules/.install.stamp
NODE_LOCK  := $(wildcard $(NODE_DIR)/package-lock.json)

.PHONY: all install test serve bench clean
.DEFAULT_GOAL := test

all: test

install: $(PY_STAMP) $(NODE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_LOCK)
ifneq ($(NODE_LOCK),)
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
else
	cd $(NODE_DIR) && npm install --no-audit --no-fund --loglevel=error
endif
	@touch $@

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: install
	$(BIN)/roomd serve $(ARGS)

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
