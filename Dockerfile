# One image for every platform process; the command picks the role (see docker-compose.yml).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 portfolio
WORKDIR /app
COPY pyproject.toml README.md ./
COPY portfolio ./portfolio
COPY serving ./serving
COPY training ./training
COPY templates ./templates
COPY manage.py ./
ARG EXTRAS=storage,sso
RUN pip install ".[${EXTRAS}]"
ENV PORTFOLIO_ENV=production PORTFOLIO_DATA_DIR=/var/lib/portfolio
RUN mkdir -p /var/lib/portfolio && chown portfolio /var/lib/portfolio \
    && DJANGO_SECRET_KEY=build-only-not-a-secret-build-only-not-a-secret DATABASE_URL=postgresql://x@localhost/x \
       REDIS_URL=redis://localhost:6379/0 python manage.py collectstatic --noinput
USER portfolio
EXPOSE 8000
CMD ["portfolio", "web"]
