"""Files written whole: a secret made once per installation (the first process's content wins, nobody else can
read it, a crash leaves nothing that blocks the next start), and a file replaced whole."""

from __future__ import annotations

import os
import stat

from portfolio import atomicwrites


def test_the_first_content_written_is_what_every_later_caller_gets(tmp_path):
    path = tmp_path / "secret"
    assert atomicwrites.create_once(path, b"first") == b"first"
    assert atomicwrites.create_once(path, b"second") == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"], "no temporary file is left"


def test_an_empty_file_left_by_a_crash_is_replaced(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"")
    assert atomicwrites.create_once(path, b"new") == b"new"
    assert path.read_bytes() == b"new"


def test_a_temporary_file_left_by_a_dead_process_of_the_same_pid_is_not_in_the_way(tmp_path):
    path = tmp_path / "secret"
    (tmp_path / f".secret.{os.getpid()}").write_bytes(b"half")
    assert atomicwrites.create_once(path, b"whole") == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_replace_writes_whole_files_private_or_by_the_umask_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "admin-password"
    path.write_text("old")
    os.chmod(path, 0o644)
    atomicwrites.replace(path, b"new", private=True)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    bundle = tmp_path / "statement.zip"
    umask = os.umask(0o022)
    try:
        atomicwrites.replace(bundle, b"zip")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-password", "statement.zip"]


def test_the_umask_is_read_without_being_changed_under_other_threads(tmp_path, monkeypatch):
    """Reading the umask with ``os.umask`` sets it for a moment: another thread's file made then would be
    open to all (umask 0)."""
    umask = os.umask(0o027)
    os.umask(umask)
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    try:
        real_umask(0o027)
        atomicwrites.replace(tmp_path / "statement.zip", b"zip")
        assert calls == [], "the umask was changed to be read"
        assert atomicwrites.current_umask() == 0o027
    finally:
        real_umask(umask)
    assert stat.S_IMODE((tmp_path / "statement.zip").stat().st_mode) == 0o640
