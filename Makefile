# intent-router — `make run` starts the service on the embedded defaults; `make test` runs everything.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test lint bench install clean services services-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/intent-router migrate
	$(BIN)/intent-router serve

# The suite runs against SQLite and a private PostgreSQL, and talks to a real Kafka broker;
# deploy/services.sh installs and starts both (Debian packages, Maven Central jars).
test: $(STAMP)
	$(BIN)/ruff check app tests bench migrations tools
	$(BIN)/mypy app
	$(BIN)/python tools/check_imports.py
	deploy/clients.sh
	deploy/services.sh up >/dev/null
	. .services/env && trap 'deploy/services.sh down' EXIT && \
	  env -u INTENT_DATABASE_URL -u INTENT_KAFKA_BOOTSTRAP -u INTENT_SECRET_KEY \
	  INTENT_TEST_DATABASE_URL="$$INTENT_DATABASE_URL" \
	  INTENT_TEST_KAFKA_BOOTSTRAP="$$INTENT_KAFKA_BOOTSTRAP" $(BIN)/python -m pytest -q

# Start a private PostgreSQL and Kafka broker. Its stdout is only the `export INTENT_...`
# lines that use them (also in .services/env), so `eval "$$(make services)"` works: the
# install's output and the recipe lines go to stderr or are not echoed.
services:
	@$(MAKE) --no-print-directory install >&2
	@deploy/services.sh up

services-down:
	deploy/services.sh down

# tools/check_imports.py: the house rules (import layers and circles, the one writer of
# delivery state, file and function sizes, no commits in route handlers).
lint: $(STAMP)
	$(BIN)/ruff check app tests bench migrations tools
	$(BIN)/ruff format --check app tests bench migrations tools
	$(BIN)/mypy app
	$(BIN)/python tools/check_imports.py

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis
