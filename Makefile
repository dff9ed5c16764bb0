# Developer entry points. `make help` lists them.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Arguments for demo/run.py, e.g. make demo DEMO_ARGS="--duration 30"
DEMO_ARGS ?=
# Arguments for pytest, e.g. make test PYTEST_ARGS="-m 'not integration'"
PYTEST_ARGS ?=
# auto: install a missing system package as root, or with sudo when it works without a
# password; no: only say what to install and fail.
INSTALL_PACKAGES ?= auto

.DEFAULT_GOAL := help
.PHONY: help install system-deps lint test demo clean

# $(call ensure-command,COMMAND,DEBIAN_PACKAGE): when COMMAND is not on PATH, install
# DEBIAN_PACKAGE with apt-get (see INSTALL_PACKAGES), or fail saying what to install.
define ensure-command
@if ! command -v $(1) >/dev/null 2>&1; then \
	need="$(1) is not on PATH; install it with: sudo apt-get install $(2)"; \
	if [ "$(INSTALL_PACKAGES)" != auto ]; then \
		echo "error: $$need" >&2; exit 1; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "error: $(1) is not on PATH; install the package that provides it (Debian/Ubuntu: $(2))" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; \
	else \
		echo "error: $$need (make does it itself when run as root or with passwordless sudo)" >&2; exit 1; \
	fi; \
	echo "$(1) not found: installing the Debian package $(2)"; \
	$$sudo apt-get update && \
	$$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends $(2) || exit 1; \
	command -v $(1) >/dev/null 2>&1 || { echo "error: $(2) installed, but $(1) is still not on PATH" >&2; exit 1; }; \
fi
endef

help: ## Show this list
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "Variables: PYTHON=$(PYTHON) DEMO_ARGS='$(DEMO_ARGS)' PYTEST_ARGS='$(PYTEST_ARGS)' INSTALL_PACKAGES=$(INSTALL_PACKAGES)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv" >&2; exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create .venv and install the package with its dev tools

system-deps: ## Install the system packages the tests and the demo run (redis-server, rabbitmq-server, prometheus, alertmanager)
	$(call ensure-command,redis-server,redis-server)
	@# Debian puts rabbitmq-server in /usr/sbin, often not on a user's PATH: name it in full.
	$(call ensure-command,/usr/sbin/rabbitmq-server,rabbitmq-server)
	@# Debian's prometheus package ships both prometheus and promtool.
	$(call ensure-command,promtool,prometheus)
	$(call ensure-command,prometheus,prometheus)
	$(call ensure-command,prometheus-alertmanager,prometheus-alertmanager)
	$(call ensure-command,amtool,prometheus-alertmanager)

lint: install ## ruff check, ruff format --check, mypy (package, then demo/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --allow-untyped-decorators demo

test: lint system-deps ## Lint, type-check and run the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install system-deps ## Run a worker, load and the exporter; print live metrics (Ctrl-C stops)
	$(BIN)/python demo/run.py $(DEMO_ARGS)

clean: ## Remove .venv, caches and demo logs
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
