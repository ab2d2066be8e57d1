"""The platform's own processes for a benchmark run on this machine: a node agent (which starts the vLLM
engines), a control worker and the gateway, each a real ``portfolio`` process against the run's PostgreSQL and
Redis. The caller has set Django up on its own data folder; its logs go to ``logs``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from django.db import connection

from benchmarks.gateway.harness import Processes, free_port, wait_http
from portfolio.envparse import database_url
from serving import processes

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "portfolio.cli"]


def base_env(threads: int | None = None) -> dict[str, str]:
    """What every process of the run shares: this run's database, Redis, secret and artifact store.
    ``threads``: OpenMP/MKL threads per process (on cores shared with other work, one thread does not wait on a
    descheduled sibling at every operation)."""
    return {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}),
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def start_node_agent(
    procs: Processes,
    data: Path,
    logs: Path,
    env: dict,
    *,
    pool: str,
    node: str,
    concurrency: int | None = None,
) -> None:
    """A node agent joining ``pool`` as ``node``, with a data folder and artifact cache of its own."""
    agent_env = {
        **env,
        "PORTFOLIO_DATA_DIR": str(data / "node"),
        "PORTFOLIO_ARTIFACT_CACHE": str(data / "node-cache"),
        "PORTFOLIO_NODE_POOL": pool,
        "PORTFOLIO_NODE_NAME": node,
    }
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    procs.start(
        "node-agent",
        [*CLI, "node-agent", "--name", node, *extra],
        log=logs / "agent.log",
        cwd=ROOT,
        env=agent_env,
    )


def start_worker(procs: Processes, data: Path, logs: Path, env: dict) -> None:
    """A control worker (reconciles) and a long one (merge jobs), one task at a time each."""
    control_env = {
        **env,
        "PORTFOLIO_DATA_DIR": str(data / "control"),
        "PORTFOLIO_ARTIFACT_CACHE": str(data / "cache"),
    }
    procs.start(
        "worker", [*CLI, "worker", "--concurrency", "1"], log=logs / "worker.log", cwd=ROOT, env=control_env
    )
    procs.start(
        "long-worker",
        [*CLI, "worker", "--long", "--concurrency", "1"],
        log=logs / "long-worker.log",
        cwd=ROOT,
        env=control_env,
    )


def start_gateway(procs: Processes, logs: Path, env: dict, *, fast: bool = True) -> str:
    """The gateway on a free port (uvloop and httptools unless ``fast`` is off); its URL once it is healthy.
    It refreshes its routing table at the product's default interval (1 s, unless the caller's environment
    sets ``PORTFOLIO_GATEWAY_REFRESH_MS``), so a time to first answer includes the wait a deployment sees."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "portfolio.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if fast:
        argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    gateway = procs.start(
        "gateway",
        argv,
        log=logs / "gateway.log",
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", gateway, logs / "gateway.log", timeout=120)
    return url


def wait(what: str, check, timeout: float, logs: Sequence[Path] = (), interval: float = 1.0):
    """``check()``'s first truthy answer; on timeout an error with the tail of each log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    tails = "\n".join(f"--- {p} ---\n{processes.log_tail(p, 60)}" for p in logs if p.exists())
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
