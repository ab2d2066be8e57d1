"""The processes a benchmark run starts, where they run (core pinning) and what CPU they use."""

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

from portfolio import direct_http


class Processes:
    """Everything the run starts, stopped in reverse order whatever happens."""

    def __init__(self):
        self.started: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, argv: list[str], *, log: Path, stop_signal: int = signal.SIGTERM, **kwargs):
        process = subprocess.Popen(
            argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        self.started.append((name, process, stop_signal))
        return process

    def stop(self, process: subprocess.Popen, stop_signal: int = signal.SIGTERM, timeout: float = 20) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop_all(self) -> None:
        for _name, process, stop_signal in reversed(self.started):
            self.stop(process, stop_signal)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(
    url: str, process: subprocess.Popen, log: Path, timeout: float = 90, headers: dict | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited:\n{log.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - a local process
            with direct_http.urlopen(request, timeout=2) as response:  # never through an env proxy
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def post(url: str, body: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with direct_http.urlopen(request, timeout=10) as response:  # never through an env proxy
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def session_cpu_seconds(sid: int | None) -> float:
    """CPU time used so far by every process of a session (a gateway started with start_new_session)."""
    if sid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # fields after the command name: state ppid pgrp session ...
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """CPU time of a process; with children, also that of its children, ended (waited for) or running."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    seconds = total / os.sysconf("SC_CLK_TCK")
    if children:
        live = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        seconds += sum(process_cpu_seconds(int(child)) for child in live.split())
    return seconds


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine, all cores, since boot (what is not idle or waiting on I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Background:
    """How busy the machine was with work other than this run: it is shared, and that moves the figures."""

    def __init__(self, service_pids: list[int]):
        self.service_pids = service_pids
        self.load_before = Path("/proc/loadavg").read_text().split()[:3]
        self.busy = machine_busy_seconds()
        self.services = sum(process_cpu_seconds(pid, children=True) for pid in service_pids)
        self.began = time.monotonic()

    def report(self, running_sids: list[int]) -> dict:
        elapsed = time.monotonic() - self.began
        times = os.times()
        ours = (
            times.user
            + times.system
            + times.children_user
            + times.children_system
            + sum(session_cpu_seconds(sid) for sid in running_sids)
            + sum(process_cpu_seconds(pid, children=True) for pid in self.service_pids)
            - self.services
        )
        busy = machine_busy_seconds() - self.busy
        return {
            "load_average_before": self.load_before,
            "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
            "seconds": round(elapsed, 1),
            "machine_busy_core_seconds": round(busy, 1),
            "this_run_core_seconds": round(ours, 1),
            "other_work_cores": round(max(0.0, busy - ours) / elapsed, 2),
        }


def pin(pid: int, core: int) -> None:
    """Pin a running process (all its threads) to one core; children it forks later inherit it."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True)


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else ""
    return ""
