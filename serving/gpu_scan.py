"""Asking nvidia-smi for this machine's GPUs, for the node agent's heartbeat (``agent.detect_gpus``)."""

from __future__ import annotations

import logging
import shutil
import subprocess

from django.conf import settings

logger = logging.getLogger(__name__)
FIRST_SCAN_TIMEOUT = 20  # a busy or failing driver can hold nvidia-smi this long


def rescan_timeout() -> float:
    """How long a rescan may hold a heartbeat: half of what the lost window leaves after a beat's sleep and the
    reconcile's last beat (``NODE_LOST_AFTER_SECONDS`` less two heartbeats), so a slow driver never gets the
    node called lost; one past it keeps the GPUs last seen."""
    left = settings.NODE_LOST_AFTER_SECONDS - 2 * settings.NODE_HEARTBEAT_SECONDS
    return max(1.0, min(float(FIRST_SCAN_TIMEOUT), left / 2))


def ask_nvidia_smi(timeout: float) -> list[dict] | None:
    """The GPUs nvidia-smi lists; none without nvidia-smi; ``None`` when it failed, did not answer in time or
    answered what does not parse (a machine with GPUs and a sick driver is not a machine without GPUs)."""
    global _failing
    if not shutil.which("nvidia-smi"):
        return []
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        _failed(type(exc).__name__, f"nvidia-smi failed ({exc})")
        return None
    try:
        gpus = [_gpu(line) for line in output.strip().splitlines()]
    except (ValueError, OverflowError) as exc:  # (int(float('inf')): an overflow)
        # A field it cannot read ("[N/A]", "[Insufficient Permissions]": MIG or vGPU machines, a driver
        # mid-reset) fails the whole scan, as a sick driver does: raised, it failed every heartbeat and the
        # node was called lost with its engines running. A GPU is not listed with what parses: its memory is
        # what placement fits models into and what GPU time is billed by, and a guess there is worse than
        # the GPUs last seen.
        _failed("unparsable", f"nvidia-smi answered what does not parse ({exc})")
        return None
    _failing = None
    return gpus


def _gpu(line: str) -> dict:
    fields = [part.strip() for part in line.split(",")]
    if len(fields) != 3:
        raise ValueError(f"{len(fields)} fields, not 3, in {line!r}")
    index, name, mib = fields
    return {"index": int(index), "name": name, "memory_bytes": int(float(mib)) * 1024 * 1024}


# The kind of failure last said, until a scan succeeds: a lasting one is logged once, not at every rescan.
_failing: str | None = None


def _failed(kind: str, message: str) -> None:
    global _failing
    level = logging.DEBUG if kind == _failing else logging.WARNING
    _failing = kind
    logger.log(level, "%s; keeping the GPUs last seen", message)
