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

# COMMAND:DEBIAN_PACKAGE pairs that system-deps makes sure of. Debian puts rabbitmq-server in
# /usr/sbin, often not on a user's PATH, so it is named in full; Debian's prometheus package
# ships both prometheus and promtool, prometheus-alertmanager both alertmanager and amtool;
# chromium (headless) loads the exporter's task pages in the browser tests.
SYSTEM_DEPS := redis-server:redis-server /usr/sbin/rabbitmq-server:rabbitmq-server \
	promtool:prometheus prometheus:prometheus \
	prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager \
	docker-compose:docker-compose chromium:chromium

# Install, in one apt-get run, the Debian packages of the SYSTEM_DEPS commands not on PATH (see
# INSTALL_PACKAGES), or fail saying what to install.
define ensure-commands
@missing=; for pair in $(SYSTEM_DEPS); do \
	command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
done; \
missing=$$(printf '%s\n' $$missing | sort -u | tr '\n' ' ' | sed 's/ *$$//'); \
[ -z "$$missing" ] && exit 0; \
need="missing Debian packages; install them with: sudo apt-get install $$missing"; \
if [ "$(INSTALL_PACKAGES)" != auto ]; then \
	echo "error: $$need" >&2; exit 1; \
elif ! command -v apt-get >/dev/null 2>&1; then \
	echo "error: install the packages that provide them (Debian/Ubuntu: $$missing)" >&2; exit 1; \
elif [ "$$(id -u)" = 0 ]; then sudo=; \
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; \
else \
	echo "error: $$need (make does it itself when run as root or with passwordless sudo)" >&2; exit 1; \
fi; \
echo "installing the Debian packages $$missing"; \
$$sudo apt-get update && \
$$sudo env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y --no-install-recommends $$missing || exit 1; \
for pair in $(SYSTEM_DEPS); do \
	command -v "$${pair%%:*}" >/dev/null 2>&1 || { echo "error: $${pair#*:} installed, but $${pair%%:*} is still not on PATH" >&2; exit 1; }; \
done
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

system-deps: ## Install the system packages the tests and the demo run (Redis, RabbitMQ, Prometheus, Alertmanager, docker-compose, Chromium)
	$(call ensure-commands)

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
