"""`make run` cut off by SIGHUP (the terminal closed, the SSH session lost) stops what it started as SIGTERM
does; killed outright (SIGKILL, no clean-up of its own), its web server, worker and beat die with it on Linux;
and a data folder whose path the embedded PostgreSQL cannot take is one line, not a traceback."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from portfolio import launcher
from tests.launcher.test_launcher import SLEEPER, _run, _serve, data_dir, started  # noqa: F401


class HangupNotHandled(Exception):
    pass


@pytest.fixture(autouse=True)
def hangup_not_fatal_to_the_tests():
    """SIGHUP's default action ends the process: one the launcher does not handle fails the test instead."""

    def unhandled(*_):
        raise HangupNotHandled

    previous = signal.signal(signal.SIGHUP, unhandled)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_while_serving_is_a_normal_stop(started, monkeypatch):  # noqa: F811
    handlers = {each: signal.getsignal(each) for each in launcher.STOP_SIGNALS}
    monkeypatch.setattr(launcher, "_answers", lambda url: os.kill(os.getpid(), signal.SIGHUP) or False)
    assert _serve() == 0
    assert all(process.poll() is not None for process in started.processes)
    assert started.calls[-2:] == ["stop redis", "stop postgres"]
    assert {each: signal.getsignal(each) for each in handlers} == handlers


def test_sighup_during_the_start_up_steps_exits_129_and_stops_the_embedded_servers(started, monkeypatch):  # noqa: F811
    def hung_up():
        os.kill(os.getpid(), signal.SIGHUP)
        return "launcher-test"

    monkeypatch.setattr(launcher.commands, "node_name", hung_up)
    assert _serve() == 129
    assert not [process for process in started.processes if process.args == SLEEPER]
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]


def test_a_terminal_gone_does_not_cut_the_stopping_short(started, monkeypatch):  # noqa: F811
    """After SIGHUP, writing to the closed terminal fails (EIO): the servers are stopped all the same."""

    def gone(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(launcher, "_answers", lambda url: os.kill(os.getpid(), signal.SIGHUP) or False)
    monkeypatch.setattr("builtins.print", gone)
    assert _serve() == 0
    assert started.calls[-2:] == ["stop redis", "stop postgres"]


# A launcher stand-in: starts a server as the launcher does, says its pid, then waits to be killed.
STAND_IN = """
import sys, time
from portfolio import launcher
server = launcher.start_server([sys.executable, "-c", "import time; time.sleep(60)"], None)
print(server.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_servers_die_with_a_launcher_killed_outright():
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True)
    server = int(stand_in.stdout.readline())
    try:
        stand_in.kill()
        stand_in.wait()
        deadline = time.monotonic() + 10
        while not _gone(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(server)
    finally:
        stand_in.stdout.close()
        if not _gone(server):
            os.kill(server, signal.SIGKILL)


def test_a_data_folder_with_a_space_is_one_line_and_starts_nothing(data_dir, monkeypatch, tmp_path, capsys):  # noqa: F811
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path / "my data"))
    assert _run() == 1  # the stubs raise if it starts or stops a server
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "has a space in its path" in out and "PORTFOLIO_DATA_DIR" in out
    assert not (tmp_path / "my data").exists()
