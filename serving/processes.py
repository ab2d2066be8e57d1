"""Engine processes on this machine: start (own session, log file), find again, health, stop.

An engine carries ``PORTFOLIO_REPLICA_ID`` in its environment, so an agent that restarts finds (and
adopts) the engines it started before, and recognises orphans whose replica no longer exists.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from portfolio import direct_http

MARKER = "PORTFOLIO_REPLICA_ID"
# What an engine inherits from the agent; everything else (database URLs, secrets) stays behind.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "HF_HOME",
    "TRANSFORMERS_CACHE",
    "XDG_CACHE_HOME",
    "CUDA_HOME",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
    "VLLM_CPU_OMP_THREADS_BIND",
)


def free_port(host: str) -> int:
    """A port free on ``host``, an IPv4 or IPv6 address or a name (the family its first address has)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        return sock.getsockname()[1]


def start(argv: list[str], env: dict[str, str], replica_id: int, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    clean_env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV}
    clean_env.update(env)
    clean_env[MARKER] = str(replica_id)
    with log_path.open("ab") as log:
        log.write(
            f"\n===== starting replica {replica_id} at {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n".encode()
        )
        process = subprocess.Popen(
            argv,
            env=clean_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: survives the agent, and is killed as a whole
            cwd=log_path.parent,
        )
    return process.pid


def replica_of(process: psutil.Process) -> int | None:
    try:
        value = process.environ().get(MARKER)
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return int(value) if value and value.isdigit() else None


def find(pid: int | None, replica_id: int) -> psutil.Process | None:
    """The live engine process of a replica, only if ``pid`` really is that replica's engine."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return None
    except psutil.NoSuchProcess:
        return None
    return process if replica_of(process) == replica_id else None


def engines_on_this_machine(under: Path | None = None) -> dict[int, psutil.Process]:
    """Every engine process group leader started by an agent, by replica id (one of them where a replica
    has two: ``all_engines`` lists both); with ``under``, only those whose working folder (the engine log
    folder of a data directory) lies there."""
    return dict(all_engines(under))


def all_engines(under: Path | None = None) -> list[tuple[int, psutil.Process]]:
    """``engines_on_this_machine`` as (replica id, process) pairs, two engines of one replica included (an
    agent killed between starting an engine and recording it leaves one the replica does not name)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        replica = replica_of(process)
        if replica is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            if os.getpgid(process.pid) != process.pid:
                continue
            if under is not None and not Path(process.cwd()).is_relative_to(under):
                continue
            found.append((replica, process))
    return found


def leaderless(under: Path | None = None) -> list[tuple[int, psutil.Process]]:
    """Engine processes whose group leader (the engine the replica recorded) is gone, one per process group, as
    (replica id, process): a vLLM engine core outliving its API server, killed or crashed. ``stop`` on one ends
    its whole group; nothing else would, as every other look-up here goes by the leader."""
    found: dict[int, tuple[int, psutil.Process]] = {}
    for process in psutil.process_iter(["pid"]):
        replica = replica_of(process)
        if replica is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            group = os.getpgid(process.pid)
            if group == process.pid or group in found or _leads(group):
                continue
            if under is not None and not Path(process.cwd()).is_relative_to(under):
                continue
            found[group] = (replica, process)
    return list(found.values())


def _leads(group: int) -> bool:
    """Whether the process ``group`` is named after still runs and leads it (not a zombie, not a reused pid)."""
    try:
        leader = psutil.Process(group)
        return leader.status() != psutil.STATUS_ZOMBIE and os.getpgid(group) == group
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False


def trainers_under(folder: Path) -> list[psutil.Process]:
    """Fine-tune trainer processes (training.runner) working in a data folder."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if "training.runner" in " ".join(process.info["cmdline"] or []) and Path(
                process.cwd()
            ).is_relative_to(folder):
                found.append(process)
    return found


def stop(process: psutil.Process, grace: float = 20.0) -> None:
    """SIGTERM the engine's whole process group, then SIGKILL what is left after ``grace`` seconds."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(-group, os.WNOHANG)
        except ChildProcessError:
            # Started by another process of the agent (a pass in a pool child): its exited engine stays a
            # zombie, which the group signal still finds, until that process reaps it. Exited is enough.
            if _only_zombies_in(group):
                break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(process.pid, os.WNOHANG)


def _only_zombies_in(group: int) -> bool:
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == group:
                return False
    return True


def kill(pid: int) -> None:
    """SIGKILL a just-started engine's whole process group at once, and reap it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except PermissionError:
        return  # not ours to kill, nor to wait for
    except ProcessLookupError:
        pass  # already exited: reaped below if it is still a zombie
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


# What a health check found (``probe``).
HEALTHY, WRONG_KEY, DOWN = "healthy", "wrong_key", "down"


def probe(base_url: str, key: str, timeout: float = 3.0) -> str:
    """The engine's health, asked with the replica's key (the engine guard refuses every path without it):
    ``HEALTHY``; ``WRONG_KEY`` when it refuses the key (401/403: it was started with another one, before
    PORTFOLIO_ENGINE_KEY_SECRET was rotated); ``DOWN`` otherwise (not listening, starting, failing)."""
    request = urllib.request.Request(  # noqa: S310 - the engine's own http address
        f"{base_url}/health", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with direct_http.urlopen(request, timeout=timeout) as response:  # the engine key: no proxy
            return HEALTHY if response.status == 200 else DOWN
    except urllib.error.HTTPError as exc:
        exc.close()
        return WRONG_KEY if exc.code in (401, 403) else DOWN
    except (urllib.error.URLError, OSError, ValueError):
        return DOWN


def log_tail(log_path: Path, lines: int = 40) -> str:
    if not log_path.exists():
        return ""
    with log_path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 16384))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
