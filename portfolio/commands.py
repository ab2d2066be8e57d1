"""The command lines of the platform's processes (web server, Celery worker, beat) and where their data lives.

Read by both `portfolio` sub-commands (`cli`) and `portfolio run` (`launcher`); it loads no Django settings,
since loading them may start the embedded servers.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def data_dir() -> Path:
    """PORTFOLIO_DATA_DIR, or ``.portfolio`` next to the code (where settings put it too)."""
    default = Path(__file__).resolve().parent.parent / ".portfolio"
    return Path(os.environ.get("PORTFOLIO_DATA_DIR") or default).expanduser().resolve()


def node_name() -> str:
    return os.environ.get("PORTFOLIO_NODE_NAME") or socket.gethostname()


def trusted_proxies() -> list[str]:
    """PORTFOLIO_TRUSTED_PROXIES, read as settings read it (without loading them: that may start servers)."""
    from portfolio.envparse import Env

    return Env().networks("PORTFOLIO_TRUSTED_PROXIES", ["127.0.0.1", "::1"])


def web_command(host: str, port: int, workers: int, proxies: list[str] | None = None) -> list[str]:
    """uvicorn takes the client's address and scheme from X-Forwarded-For / -Proto only on connections from
    ``proxies`` (the right-most address no trusted proxy added); never its own FORWARDED_ALLOW_IPS default."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "portfolio.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-server-header",
        "--proxy-headers",
        "--forwarded-allow-ips",
        ",".join(trusted_proxies() if proxies is None else proxies),
    ]


LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


def log_level() -> str:
    """PORTFOLIO_LOG_LEVEL, read as settings read it: the Celery processes' ``--loglevel``, which decides
    their level over the settings' (``portfolio/celery.py``)."""
    from portfolio.envparse import Env

    return Env().choice("PORTFOLIO_LOG_LEVEL", "INFO", LOG_LEVELS)


def worker_command(queues: list[str], concurrency: int, hostname: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "portfolio",
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--hostname",
        hostname,
        "--loglevel",
        log_level(),
        "--without-gossip",
        "--without-mingle",
    ]


def beat_command(schedule_file: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "portfolio", "beat", "--loglevel", log_level()]
    if schedule_file:
        command += ["--schedule", schedule_file]
    return command
