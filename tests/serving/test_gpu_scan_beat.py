"""nvidia-smi failing or slow on a GPU node: the node keeps the GPUs last seen (reported as none, it refused
placements and fine-tunes until the next rescan, five minutes later), and a slow rescan gives up well inside the
lost window instead of holding the heartbeat past it."""

from __future__ import annotations

import time

import pytest

from serving import agent, gpu_scan
from serving.models import Node
from tests.serving import test_gpu_detection as detection
from tests.serving.nodes import GIB, add_node
from tests.serving.test_gpu_detection import TWO_GPUS, NvidiaSmi

pytestmark = pytest.mark.django_db
# The fake nvidia-smi on PATH, the agent's clock and a GPU pool, as tests/serving/test_gpu_detection.py has them.
clock, local_pool, nvidia_smi = detection.clock, detection.local_pool, detection.nvidia_smi


def _answer_with(fake: NvidiaSmi, script: str) -> None:
    """nvidia-smi, still noting each run, now does ``script`` (``exec``: a killed run leaves nothing behind)."""
    (fake.folder / "nvidia-smi").write_text(f"#!/bin/sh\necho run >> {fake.runs_file}\n{script}\n")


def _gpus_on_record() -> int:
    return len(Node.objects.get(name="gpu-01").gpus)


def test_a_failing_rescan_keeps_the_gpus_last_seen(nvidia_smi, clock, local_pool):
    nvidia_smi.answer = TWO_GPUS
    agent.heartbeat("gpu-01")
    assert _gpus_on_record() == 2
    _answer_with(nvidia_smi, "echo 'Unable to determine the device handle' >&2\nexit 1")
    clock.now += agent.GPU_RESCAN_SECONDS + 1  # (+1: past it, whatever the rounding)
    agent.heartbeat("gpu-01")
    assert _gpus_on_record() == 2 and nvidia_smi.runs == 2
    agent.heartbeat("gpu-01")  # asked again at the next rescan, not at every beat
    assert nvidia_smi.runs == 2


def test_a_first_scan_that_fails_keeps_the_gpus_the_node_has_on_record(nvidia_smi, local_pool, monkeypatch):
    add_node(
        local_pool,
        "gpu-01",
        gpus=[{"index": i, "name": "NVIDIA H100", "memory_bytes": 80 * GIB} for i in (0, 1)],
    )
    monkeypatch.setattr(agent, "_gpus_seen", None)  # the agent has just started
    _answer_with(nvidia_smi, "exit 1")
    agent.heartbeat("gpu-01")
    assert _gpus_on_record() == 2 and nvidia_smi.runs == 1


def test_a_slow_rescan_gives_up_inside_the_lost_window_and_keeps_the_gpus(
    nvidia_smi, clock, local_pool, settings, monkeypatch
):
    settings.NODE_HEARTBEAT_SECONDS, settings.NODE_LOST_AFTER_SECONDS = 1, 4  # a rescan may take 1 s
    nvidia_smi.answer = TWO_GPUS
    agent.heartbeat("gpu-01")
    _answer_with(nvidia_smi, "exec sleep 30")
    clock.now += agent.GPU_RESCAN_SECONDS + 1  # (+1: past it, whatever the rounding)
    asked: list[float] = []
    ask = gpu_scan.ask_nvidia_smi

    def noting_the_timeout(timeout: float) -> list[dict] | None:
        asked.append(timeout)
        return ask(timeout)

    monkeypatch.setattr(gpu_scan, "ask_nvidia_smi", noting_the_timeout)
    began = time.perf_counter()
    agent.register("gpu-01", "gpu-pool", "127.0.0.1")
    elapsed = time.perf_counter() - began
    # What the rescan was allowed is what keeps the node out of the lost window: half of what the window
    # leaves after a beat's sleep and the reconcile's last beat (gpu_scan.rescan_timeout). Checked on the
    # timeout handed over, not on the wall clock, which a loaded machine stretches by whole seconds.
    left = settings.NODE_LOST_AFTER_SECONDS - 2 * settings.NODE_HEARTBEAT_SECONDS
    assert len(asked) == 1 and 0 < asked[0] <= left / 2, asked
    # Given up, not waited out: the 30 s nvidia-smi was killed well before the node would be called lost.
    assert elapsed < settings.NODE_LOST_AFTER_SECONDS, elapsed
    assert _gpus_on_record() == 2 and nvidia_smi.runs == 2
