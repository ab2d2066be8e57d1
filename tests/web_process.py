"""A real `portfolio web` process (the command compose runs), on a free loopback port."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import stop_group

ROOT = Path(__file__).resolve().parent.parent


def start_web(env: dict[str, str], log: Path, timeout: float = 90) -> tuple[subprocess.Popen, int]:
    """Start it with ``env``; return once it answers HTTP at all (in production /healthz itself may redirect)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portfolio.cli",
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return process, port
        except OSError:
            time.sleep(0.3)
        finally:
            conn.close()
    stop_web(process)
    raise RuntimeError(f"portfolio web did not start:\n{log.read_text()[-4000:]}")


def stop_web(process: subprocess.Popen) -> None:
    stop_group(process, grace=30)
