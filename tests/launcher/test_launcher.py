"""`portfolio run` guards what it owns: one launcher per data folder, never in production, and a data folder
that only its user can read; it stops all it started however it ends, and its exit status says how it ended.
The embedded servers and start-up steps are stubbed: these tests start no server."""

import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from portfolio import commands, embedded, launcher
from serving.processes import free_port


class ServerStarted(Exception):
    pass


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    """A fresh data folder whose embedded servers, were they asked for, would stop the launcher at once (which
    then stops the one it was starting, as it would one interrupted half-way; stopping any other is refused)."""
    folder = tmp_path / "data"
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(folder))
    monkeypatch.delenv("PORTFOLIO_ENV", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    asked = []

    def refuse(root, *args, **kwargs):
        asked.append(root)
        raise ServerStarted(root)

    def stop(root, *args, **kwargs):
        if not asked:
            raise ServerStarted(root)

    monkeypatch.setattr(embedded, "ensure_postgres", refuse)
    monkeypatch.setattr(embedded, "ensure_redis", refuse)
    monkeypatch.setattr(embedded, "stop_postgres", stop)
    monkeypatch.setattr(embedded, "stop_redis", stop)
    return folder


def _run():
    return launcher.run_all(host="127.0.0.1", port=free_port("127.0.0.1"), demo=False)


def test_a_second_launcher_on_the_same_data_folder_refuses_and_touches_nothing(data_dir, capsys):
    data_dir.mkdir()
    with open(data_dir / "run.lock", "w") as first:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first.write("4242")
        first.flush()
        assert _run() == 1  # the stubs raise if it starts, attaches to or stops a server
    assert "already running" in capsys.readouterr().out
    assert (data_dir / "run.lock").read_text() == "4242"
    assert not (data_dir / "logs").exists()


def test_the_refusal_names_the_running_launchers_pid(data_dir, capsys):
    data_dir.mkdir()
    with open(data_dir / "run.lock", "w") as first:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first.write("4242")
        first.flush()
        _run()
    assert "(pid 4242)" in capsys.readouterr().out


def test_the_lock_is_released_when_the_launcher_exits(data_dir):
    with pytest.raises(ServerStarted):
        _run()
    with pytest.raises(ServerStarted):  # not "already running"
        _run()


def test_the_one_machine_launcher_refuses_production(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PORTFOLIO_ENV", "production")
    assert _run() == 1
    out = capsys.readouterr().out
    assert "PORTFOLIO_ENV=production" in out and "`portfolio web`" in out and "`portfolio worker`" in out
    assert not data_dir.exists()


def test_the_data_folder_is_made_readable_by_its_user_only(data_dir):
    with pytest.raises(ServerStarted):
        _run()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_a_data_folder_left_open_to_others_is_closed(data_dir):
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    with pytest.raises(ServerStarted):
        _run()
    # Run as root, others may still pass through: the embedded PostgreSQL's own user reaches pgdata so.
    assert stat.S_IMODE(data_dir.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)


# --- How the run ends: its exit status, and everything it started stopped --------------------------------
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def started(data_dir, monkeypatch):
    """A launcher whose embedded servers start and stop on paper (``calls``), whose start-up steps succeed at
    once, and whose web server, worker and beat run until stopped; each process it starts is in ``processes``.
    A test changes ``commands`` (a crash) or the steps (``launcher.MANAGE``) to end the run its way."""
    calls: list[str] = []
    for server, url in (("postgres", "postgresql://stub"), ("redis", "redis://stub")):
        monkeypatch.setattr(
            embedded, f"ensure_{server}", lambda root, s=server, u=url: calls.append(f"start {s}") or u
        )
        monkeypatch.setattr(embedded, f"stop_{server}", lambda root, s=server: calls.append(f"stop {s}"))
    monkeypatch.setattr(launcher, "MANAGE", [sys.executable, "-c", "pass"])
    monkeypatch.setattr(commands, "node_name", lambda: "launcher-test")
    monkeypatch.setattr(commands, "web_command", lambda *args: SLEEPER)
    monkeypatch.setattr(commands, "worker_command", lambda *args: SLEEPER)
    monkeypatch.setattr(commands, "beat_command", lambda *args: SLEEPER)
    processes: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        processes.append(real_popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    saved_environ = os.environ.copy()  # the launcher sets DATABASE_URL, REDIS_URL, PORTFOLIO_NODE_NAME...
    yield SimpleNamespace(calls=calls, processes=processes)
    os.environ.clear()
    os.environ.update(saved_environ)


def _serve(port=None):
    return launcher.run_all(host="127.0.0.1", port=port or free_port("127.0.0.1"), demo=False)


@pytest.mark.parametrize("crashed", ["web", "worker", "beat"])
def test_a_server_that_exits_on_its_own_fails_the_run_and_everything_is_stopped(
    started, monkeypatch, capsys, crashed
):
    """A web server that crashes as it starts (a broken setting, a port taken since the check): `make run`
    stops with it, failing."""
    monkeypatch.setattr(commands, f"{crashed}_command", lambda *args: [sys.executable, "-c", "exit(3)"])
    assert _serve() == 1
    assert f"{crashed} exited with status 3; stopping everything" in capsys.readouterr().out
    assert all(process.poll() is not None for process in started.processes)
    stopped = [process.returncode for process in started.processes if process.args == SLEEPER]
    # The other servers (web, the two workers, beat; both workers when the worker command fails).
    assert stopped == [-signal.SIGTERM] * (2 if crashed == "worker" else 3)
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_while_serving_is_a_normal_stop(started, monkeypatch, sig):
    """The person's way to end `make run`: exit status 0, everything stopped, the signal handlers put back."""
    handlers = {each: signal.getsignal(each) for each in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(launcher, "_answers", lambda url: os.kill(os.getpid(), sig) or False)  # while serving
    assert _serve() == 0
    assert all(process.poll() is not None for process in started.processes)
    assert started.calls[-2:] == ["stop redis", "stop postgres"]
    assert {each: signal.getsignal(each) for each in handlers} == handlers


def test_only_the_local_worker_is_the_node_agent_not_the_long_worker(started, monkeypatch, tmp_path):
    """The long worker (eval runs, merges, imports, ingests) is a Celery worker too: with the launcher's
    PORTFOLIO_NODE_AGENT=1 it would run a second heartbeat loop reconciling this machine's engines."""
    script = "import os, sys, time; open(sys.argv[1], 'w').write(os.environ.get('PORTFOLIO_NODE_AGENT', '')); time.sleep(120)"

    def worker(queues, *args):
        return [sys.executable, "-c", script, str(tmp_path / queues[-1])]

    monkeypatch.setattr(commands, "worker_command", worker)
    written = [tmp_path / "node.launcher-test", tmp_path / "control.long"]

    def answers(url):
        if all(path.exists() and path.read_text() for path in written):
            os.kill(os.getpid(), signal.SIGINT)
        return False

    monkeypatch.setattr(launcher, "_answers", answers)
    assert _serve() == 0
    assert [path.read_text() for path in written] == ["1", "0"]


def test_ctrl_c_during_the_start_up_steps_exits_130_and_stops_the_embedded_servers(started, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "node_name", interrupted)
    assert _serve() == 130
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]


def test_sigterm_during_the_start_up_steps_exits_143_and_starts_no_server(started, monkeypatch):
    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        return "launcher-test"

    handlers = {each: signal.getsignal(each) for each in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(commands, "node_name", terminated)
    assert _serve() == 143
    assert not [process for process in started.processes if process.args == SLEEPER]
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]
    assert {each: signal.getsignal(each) for each in handlers} == handlers


def test_sigterm_cuts_a_long_start_up_step_short(started, monkeypatch):
    """A migration that takes minutes is not waited for: the step is stopped with the rest."""
    monkeypatch.setattr(launcher, "MANAGE", [sys.executable, "-c", "import time; time.sleep(20)"])
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    began = time.monotonic()
    assert _serve() == 143
    assert time.monotonic() - began < 10
    assert all(process.poll() is not None for process in started.processes)
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]


def test_a_failed_start_up_step_fails_the_run_and_stops_the_embedded_servers(started, monkeypatch, capsys):
    monkeypatch.setattr(launcher, "MANAGE", [sys.executable, "-c", "exit(1)"])
    assert _serve() == 1
    assert "start-up step failed: migrate --noinput" in capsys.readouterr().out
    assert started.calls == ["start postgres", "start redis", "stop redis", "stop postgres"]


def test_an_embedded_redis_that_cannot_start_stops_the_postgresql_already_started(started, monkeypatch):
    def broken(root):
        raise RuntimeError("embedded Redis did not start within 15s")

    monkeypatch.setattr(embedded, "ensure_redis", broken)
    with pytest.raises(RuntimeError):
        _serve()
    assert started.calls == ["start postgres", "stop redis", "stop postgres"]
