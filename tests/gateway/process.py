"""Starting a real gateway process (uvicorn serving portfolio.asgi) against the test database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The test database as a URL for a child process, every part quoted (as the node agent hands it on)."""
    from portfolio.envparse import database_url as url_of

    return url_of(connection.settings_dict)


def start_gateway(log: Path, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_GATEWAY_REFRESH_MS": "200",
        "PYTHONUNBUFFERED": "1",
        **env_overrides,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "portfolio.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)  # noqa: S310
            return process, base
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    stop_gateway(process)
    raise RuntimeError(f"gateway did not start:\n{log.read_text()}")


def stop_gateway(process: subprocess.Popen) -> None:
    stop_group(process, grace=20)
