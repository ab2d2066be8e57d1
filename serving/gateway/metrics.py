"""Prometheus metrics of the gateway, by endpoint and team (never by key or secret)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("portfolio_gateway_requests_total", "Gateway requests", ["endpoint", "team", "status"])
ERRORS = Counter("portfolio_gateway_errors_total", "Gateway errors by type", ["endpoint", "team", "type"])
TOKENS = Counter("portfolio_gateway_tokens_total", "Tokens processed", ["endpoint", "team", "direction"])
LATENCY = Histogram("portfolio_gateway_request_seconds", "Request latency", ["endpoint", "team"],
                    buckets=LATENCY_BUCKETS)
TTFT = Histogram("portfolio_gateway_time_to_first_token_seconds", "Time to first streamed token",
                 ["endpoint", "team"], buckets=LATENCY_BUCKETS)


def render() -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
