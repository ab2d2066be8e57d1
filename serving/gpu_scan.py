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
    """The GPUs nvidia-smi lists; none without nvidia-smi; ``None`` when it failed or did not answer in time
    (a machine with GPUs and a sick driver is not a machine without GPUs)."""
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
        logger.warning("nvidia-smi failed (%s); keeping the GPUs last seen", exc)
        return None
    gpus = []
    for line in output.strip().splitlines():
        index, name, mib = (part.strip() for part in line.split(","))
        gpus.append({"index": int(index), "name": name, "memory_bytes": int(float(mib)) * 1024 * 1024})
    return gpus
