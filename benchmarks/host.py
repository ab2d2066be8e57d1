"""The machine a benchmark ran on, as every results file records it: the CPU's model explains as much of a
figure as the code does (the same runs differ by 1.6x between two 2-core hosts of this project)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kind": "shared 2-core development machine"
        if os.cpu_count() == 2
        else f"{os.cpu_count()}-core machine",
    }
