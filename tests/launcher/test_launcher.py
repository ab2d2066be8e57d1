"""`portfolio run` guards what it owns: one launcher per data folder, never in production, and a data folder
that only its user can read. The embedded servers are stubbed: these tests start nothing."""

import fcntl
import stat

import pytest

from portfolio import embedded, launcher


class ServerStarted(Exception):
    pass


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    """A fresh data folder whose embedded servers, were they asked for, would stop the launcher at once."""
    folder = tmp_path / "data"
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(folder))
    monkeypatch.delenv("PORTFOLIO_ENV", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)

    def refuse(root, *args, **kwargs):
        raise ServerStarted(root)

    monkeypatch.setattr(embedded, "ensure_postgres", refuse)
    monkeypatch.setattr(embedded, "ensure_redis", refuse)
    monkeypatch.setattr(embedded, "stop_postgres", refuse)
    monkeypatch.setattr(embedded, "stop_redis", refuse)
    return folder


def _run():
    return launcher.run_all(host="127.0.0.1", port=8000, demo=False)


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
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
