# The two set-up commands (see README): `make run` and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TEST_PACKAGES := pebble bind9 bind9-utils openssl nodejs npm haproxy nginx-light chromium libnss3-tools postgresql-15

.PHONY: run test deps system-deps python-deps buf-deps check lint typecheck proto-check unit clean

## The broker on its embedded SQLite default, listening on 127.0.0.1:50051, against
## Let's Encrypt's STAGING directory unless CERTBROKER_ACME_DIRECTORY is set.
LETS_ENCRYPT_STAGING := https://acme-staging-v02.api.letsencrypt.org/directory
run: python-deps
	@if [ -z "$$CERTBROKER_ACME_DIRECTORY" ]; then \
	  echo "make run: using Let's Encrypt STAGING ($(LETS_ENCRYPT_STAGING));" \
	    "set CERTBROKER_ACME_DIRECTORY to use another CA"; fi
	CERTBROKER_ACME_DIRECTORY="$${CERTBROKER_ACME_DIRECTORY:-$(LETS_ENCRYPT_STAGING)}" \
	  $(VENV)/bin/certbroker serve

## Everything the tests need, then every check and the whole suite.
test: deps check unit

deps: system-deps python-deps buf-deps

system-deps:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v node >/dev/null && command -v npm >/dev/null && \
	  missing=$$(echo $$missing | tr ' ' '\n' | grep -vx -e nodejs -e npm | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(UV):
	@$(PYTHON) -m venv $(TOOLS) 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(TOOLS); }
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

python-deps: $(UV)
	$(UV) sync --locked --python $(PYTHON)

buf-deps:
	npm ci --no-audit --no-fund --loglevel=error

check: proto-check lint typecheck

proto-check:
	scripts/gen_protos.sh --check
	node_modules/.bin/buf lint
	node_modules/.bin/buf format -d --exit-code
	scripts/buf_breaking.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(TOOLS) $(VENV) node_modules
