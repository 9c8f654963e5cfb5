# roomd — build and test plumbing (GNU make).
#   make serve     runtime install (.venv, roomd editable; python3 only), then
#                  `roomd serve $(ARGS)`, e.g. make serve ARGS='--port 3001'
#   make test      runtime + test install (test extras, npm ci in tests/node, and Debian's
#                  chromium for the Admin UI browser test: apt-get, as root only; Debian's
#                  redis-server for the cluster tests when it is missing), then the
#                  import contracts (lint-imports), mypy, ruff check and pytest
#                  (pytest fails when no test is collected: it exits 5)
#   make install   the runtime install only; then `. .venv/bin/activate` puts roomd on PATH
#   make install-test   the runtime and the test install
#   make install-system [PREFIX=/usr/local ROOMD_HOME=/opt/roomd ...]
#                  a self-contained copy for the shipped systemd units (as root):
#                  venv in $(ROOMD_HOME), $(BINDIR)/roomd, man pages, $(CONFDIR)/roomd.toml
#                  (kept when present), units in $(UNITDIR); see docs/deploy.md
#   make uninstall-system   removes what install-system put there (not $(CONFDIR))
#   make bench     test install, then run the yardstick (../shared/bench) with roomd,
#                  Node.js socket.io and python-socketio (docs/performance.md); beside it:
#   make bench-storm  runtime install and tests/node's npm packages, then python -m bench.storm:
#                  a reconnect storm (10,000 stock socket.io-client clients dropped at once
#                  by a server restart or a network cut) against roomd and Node.js socket.io
#                  (docs/performance.md, "Reconnect storm"); STORM_ARGS='--reps 1 ...' adds
#                  options (python -m bench.storm --help)
#   make bench-cluster  runtime install, tests/node's npm packages and redis-server, then
#                  bench/cluster.sh: two roomd nodes against two Node.js socket.io nodes
#                  on one Redis (docs/performance.md, "Cluster")
#   make clean     remove .venv, node_modules, stamps and caches
# Stamp files make repeated runs fast; they are redone when their inputs change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NODE_DIR := tests/node
ARGS   ?=
PYTEST_ARGS ?=

PY_STAMP   := $(VENV)/.install.stamp
TEST_STAMP := $(VENV)/.install-test.stamp
NODE_STAMP := $(NODE_DIR)/node_modules/.install.stamp
NODE_LOCK  := $(wildcard $(NODE_DIR)/package-lock.json)

# install-system: where the copy goes. The units name $(BINDIR)/roomd and $(CONFDIR).
PREFIX     ?= /usr/local
ROOMD_HOME ?= /opt/roomd
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
CONFDIR    ?= /etc/roomd
UNITDIR    ?= /etc/systemd/system
UNITS      := roomd.service roomd@.service roomd.socket

CHROMIUM   ?= /usr/bin/chromium

.PHONY: all install install-test test serve bench clean install-system uninstall-system browser \
        redis-server bench-cluster bench-storm
.DEFAULT_GOAL := test

all: test

install: $(PY_STAMP)
	@echo "roomd is installed in $(VENV): run '. $(BIN)/activate' to put roomd on PATH" \
	      "(or run $(BIN)/roomd)"

install-test: $(PY_STAMP) $(TEST_STAMP) $(NODE_STAMP) browser redis-server

# The cluster tests start real redis-server processes (Redis 7: sharded pub/sub).
redis-server:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
	  echo "make: redis-server is missing: installing Debian's redis-server package" \
	       "(apt-get update, then apt-get install -y redis-server)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server; \
	fi

# tests/test_admin_ui_browser.py drives Debian's chromium (through npm's playwright-core);
# without it, and not root to install it, that one test is skipped with this reason.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "make: $(CHROMIUM) is missing and this is not root: the Admin UI browser test will be skipped (apt-get install chromium as root to run it)"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "make: $(CHROMIUM) is missing and there is no apt-get: the Admin UI browser test will be skipped"; \
	else \
	  echo "make: installing Debian's chromium for the Admin UI browser test: apt-get update, then apt-get install -y chromium"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	@touch $@

$(TEST_STAMP): pyproject.toml $(PY_STAMP)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_LOCK)
ifneq ($(NODE_LOCK),)
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
else
	cd $(NODE_DIR) && npm install --no-audit --no-fund --loglevel=error
endif
	@touch $@

test: install-test
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/ruff check roomd roomd_cli tests bench docs/examples
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: $(PY_STAMP)
	@echo "roomd serve $(ARGS)   (in another shell: '. $(BIN)/activate', then roomd status)"
	$(BIN)/roomd serve $(ARGS)

bench: install-test
	bench/run.sh

# A copy, not an editable install: the units run with ProtectHome=yes and as a
# dynamic user, so nothing may point back into this clone. umask 022: the
# dynamic user must be able to read the venv.
install-system:
	umask 022 && $(PYTHON) -m venv --clear $(ROOMD_HOME)
	umask 022 && $(ROOMD_HOME)/bin/python -m pip install --disable-pip-version-check -q \
	    --no-cache-dir .
	install -d $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(UNITDIR)
	install -d -m 755 $(CONFDIR)
	ln -sfn $(ROOMD_HOME)/bin/roomd $(BINDIR)/roomd
	install -m 644 man/roomd.1 $(MANDIR)/man1/roomd.1
	install -m 644 man/roomd.toml.5 $(MANDIR)/man5/roomd.toml.5
	test -e $(CONFDIR)/roomd.toml || install -m 644 dist/roomd.toml $(CONFDIR)/roomd.toml
	for unit in $(UNITS); do \
	    sed -e 's#/usr/local/bin/roomd#$(BINDIR)/roomd#g' -e 's#/etc/roomd/#$(CONFDIR)/#g' \
	        dist/$$unit > $(UNITDIR)/$$unit && chmod 644 $(UNITDIR)/$$unit || exit 1; \
	done
	@echo "installed $(BINDIR)/roomd -> $(ROOMD_HOME); then: systemctl daemon-reload &&" \
	      "systemctl enable --now roomd (see docs/deploy.md)"

uninstall-system:
	rm -f $(BINDIR)/roomd $(MANDIR)/man1/roomd.1 $(MANDIR)/man5/roomd.toml.5
	for unit in $(UNITS); do rm -f $(UNITDIR)/$$unit; done
	rm -rf $(ROOMD_HOME)

bench-cluster: $(PY_STAMP) $(NODE_STAMP) redis-server
	bench/cluster.sh

STORM_ARGS ?=
bench-storm: $(PY_STAMP) $(NODE_STAMP)
	$(BIN)/python -m bench.storm $(STORM_ARGS)

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
