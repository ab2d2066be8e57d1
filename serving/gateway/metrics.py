"""Prometheus metrics of the gateway, by endpoint and team (never by key or secret).

``/metrics`` is served only to a scraper that presents ``PORTFOLIO_METRICS_TOKEN`` as a bearer token; with
no token configured it answers 404, as if it did not exist. Requests the gateway refuses itself (bad key,
unknown model, invalid body, limits) are counted by reason: the reason is one of the gateway's own error
codes, so the label takes a handful of values whatever clients send.
"""

from __future__ import annotations

import hmac
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("portfolio_gateway_requests_total", "Gateway requests", ["endpoint", "team", "status"])
ERRORS = Counter("portfolio_gateway_errors_total", "Gateway errors by type", ["endpoint", "team", "type"])
REFUSED = Counter(
    "portfolio_gateway_refused_total",
    "Requests the gateway refused itself, by reason (team: '-' before the key is known)",
    ["reason", "status", "team"],
)
TOKENS = Counter("portfolio_gateway_tokens_total", "Tokens processed", ["endpoint", "team", "direction"])
LATENCY = Histogram(
    "portfolio_gateway_request_seconds", "Request latency", ["endpoint", "team"], buckets=LATENCY_BUCKETS
)
TTFT = Histogram(
    "portfolio_gateway_time_to_first_token_seconds",
    "Time to first streamed token",
    ["endpoint", "team"],
    buckets=LATENCY_BUCKETS,
)


def authorized(header: bytes, token: str | None) -> bool | None:
    """None when /metrics is not served (no token configured); else whether ``header`` (the request's
    Authorization) carries the token."""
    if not token:
        return None
    scheme, _, presented = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), token.encode())


def render() -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
