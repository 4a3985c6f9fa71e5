# BotArmy HITL: `make run` starts the whole system on one machine, `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TEST_ENV := DJANGO_SETTINGS_MODULE=botarmy_hitl.test_settings

.PHONY: venv run test check clean

$(BIN)/.installed: requirements.txt hitl_sdk/pyproject.toml $(wildcard hitl_sdk/hitl_sdk/*.py)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

venv: $(BIN)/.installed

# Migrate, seed the demo users/project/keys, then daphne + Celery worker + beat (embedded default).
run: venv
	bin/run

# System checks, missing migrations, the OpenAPI schema, the layers of the apps (lint-imports),
# the SDK's generated sync client (tools/unasync.py --check), then the whole test suite. Set DATABASE_URL=postgres://...
# and REDIS_URL=redis://... to run it against PostgreSQL and Redis (as .ci/run does).
test: venv check
	$(TEST_ENV) $(BIN)/pytest

check: venv
	$(TEST_ENV) $(BIN)/python manage.py check --fail-level WARNING
	$(TEST_ENV) $(BIN)/python manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(BIN)/lint-imports --no-cache
	$(BIN)/python hitl_sdk/tools/unasync.py --check

clean:
	rm -rf $(VENV) var
