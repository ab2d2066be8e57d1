"""A second `make run` (another data folder, the same port) once took the first one's health answer for its own
and said "ready" while its web server had failed to bind. A port in use is now refused before anything starts,
naming the port and how to pick another; and an answer on the port counts only from this run's web server."""

import http.server
import os
import signal
import socket
import sys
import threading

import pytest

from portfolio import commands, launcher
from serving.processes import free_port
from tests.launcher.test_launcher import data_dir, started  # noqa: F401


class Healthy(http.server.BaseHTTPRequestHandler):
    """Answers every request 200, as the platform's web server answers /healthz."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def other_instance():
    """Another `make run`'s web server, healthy, in this process: ``start(port)`` starts it on that port."""
    servers = []

    def start(port: int) -> None:
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), Healthy))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_port_another_instance_serves_on_is_refused_before_anything_starts(
    data_dir,  # noqa: F811
    other_instance,
    capsys,
):
    port = free_port("127.0.0.1")
    other_instance(port)
    assert (
        launcher.run_all(host="127.0.0.1", port=port, demo=False) == 1
    )  # the stubs raise if a server starts
    out = capsys.readouterr().out
    assert f"port {port} on 127.0.0.1 is in use" in out
    assert f"make run PORTFOLIO_PORT={port + 1}" in out and "nothing was started" in out
    assert "ready" not in out and not (data_dir / "logs").exists()


def test_a_port_merely_bound_by_another_program_is_refused_too(data_dir, capsys):  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert launcher.run_all(host="127.0.0.1", port=port, demo=False) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().out


def test_an_answer_from_a_server_that_took_the_port_after_the_check_is_not_taken_for_its_own(
    started,  # noqa: F811
    other_instance,
    monkeypatch,
    capsys,
):
    """The port was free when checked; another instance took it before this one's web server bound it, which
    then exits (as uvicorn does, once Django is loaded): the run fails, and never says it is ready."""

    def web_losing_the_port(host, port, workers):
        other_instance(port)
        return [sys.executable, "-c", "import time; time.sleep(3); exit(1)"]

    monkeypatch.setattr(commands, "web_command", web_losing_the_port)
    assert launcher.run_all(host="127.0.0.1", port=free_port("127.0.0.1"), demo=False) == 1
    out = capsys.readouterr().out
    assert "web exited with status 1; stopping everything" in out
    assert "ready" not in out and "listening" not in out


def test_its_own_web_server_answering_is_ready(started, monkeypatch, capsys, tmp_path):  # noqa: F811
    port = free_port("127.0.0.1")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "healthz").write_text("ok")  # what the platform's web server answers 200 on
    web = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(tmp_path / "site"),
    ]
    monkeypatch.setattr(commands, "web_command", lambda *args: web)
    ready = launcher._ready

    def ready_then_stopped(*args, **kwargs):
        ready(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the person stops it

    monkeypatch.setattr(launcher, "_ready", ready_then_stopped)
    assert launcher.run_all(host="127.0.0.1", port=port, demo=False) == 0
    assert f"ready: http://127.0.0.1:{port}/" in capsys.readouterr().out
