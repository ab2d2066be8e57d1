"""nvidia-smi answering a field it cannot read ("[N/A]", "[Insufficient Permissions]": MIG and vGPU machines, a
driver mid-reset) raised out of the heartbeat: no beat was recorded, the node was called lost and its replicas
placed elsewhere while its engines ran. Such an answer fails the scan as a sick driver does: the beat is recorded
and the node keeps the GPUs last seen, asked again at the next rescan, and the failure is logged once."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from serving import agent, gpu_scan
from serving.models import Node
from tests.serving import test_gpu_detection as detection
from tests.serving.nodes import GIB, add_node
from tests.serving.test_gpu_detection import TWO_GPUS

pytestmark = pytest.mark.django_db
# The fake nvidia-smi on PATH, the agent's clock and a GPU pool, as tests/serving/test_gpu_detection.py has them.
clock, local_pool, nvidia_smi = detection.clock, detection.local_pool, detection.nvidia_smi

UNREADABLE = [
    "0, NVIDIA H100, 81559\n1, NVIDIA H100, [N/A]\n",
    "0, NVIDIA H100, [Insufficient Permissions]\n",
    "[N/A], NVIDIA H100, 81559\n",
    "0, NVIDIA H100\n",  # a column short
    "0, NVIDIA H100, 81559, 1\n",  # one too many
]


@pytest.fixture(autouse=True)
def no_failure_said(monkeypatch):
    # A failure an earlier test left is not this one's (raising=False: the same test, without the fix).
    monkeypatch.setattr(gpu_scan, "_failing", None, raising=False)


def _beat_late() -> tuple:
    """A heartbeat 30 s after the last one: (the beat before, the beat now) as recorded."""
    Node.objects.filter(name="gpu-01").update(heartbeat_at=Now() - timedelta(seconds=30))
    before = Node.objects.get(name="gpu-01").heartbeat_at
    agent.heartbeat("gpu-01")
    return before, Node.objects.get(name="gpu-01").heartbeat_at


@pytest.mark.parametrize("answer", UNREADABLE, ids=["na-memory", "permissions", "na-index", "short", "long"])
def test_an_unreadable_rescan_still_beats_and_keeps_the_gpus_last_seen(nvidia_smi, clock, local_pool, answer):
    nvidia_smi.answer = TWO_GPUS
    agent.heartbeat("gpu-01")
    nvidia_smi.answer = answer
    clock.now += agent.GPU_RESCAN_SECONDS + 1  # (+1: past it, whatever the rounding)
    before, now = _beat_late()
    assert now > before
    assert len(Node.objects.get(name="gpu-01").gpus) == 2 and nvidia_smi.runs == 2
    agent.heartbeat("gpu-01")  # asked again at the next rescan, not at every beat
    assert nvidia_smi.runs == 2


def test_an_unreadable_first_scan_keeps_the_gpus_the_node_has_on_record(nvidia_smi, local_pool, monkeypatch):
    gpus = [{"index": i, "name": "NVIDIA H100", "memory_bytes": 80 * GIB} for i in (0, 1)]
    add_node(local_pool, "gpu-01", gpus=gpus)
    monkeypatch.setattr(agent, "_gpus_seen", None)  # the agent has just started
    nvidia_smi.answer = UNREADABLE[0]
    before, now = _beat_late()
    assert now > before and Node.objects.get(name="gpu-01").gpus == gpus


def test_a_lasting_failure_is_logged_once_and_again_once_it_changes(nvidia_smi, clock, local_pool, caplog):
    caplog.set_level(logging.DEBUG, logger=gpu_scan.__name__)
    nvidia_smi.answer = UNREADABLE[0]
    for _ in range(3):
        clock.now += agent.GPU_RESCAN_SECONDS + 1
        agent.heartbeat("gpu-01")
    assert nvidia_smi.runs == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "does not parse" in warned[0] and "[N/A]" in warned[0]
    nvidia_smi.answer = TWO_GPUS  # answers again: a later failure is said again
    clock.now += agent.GPU_RESCAN_SECONDS + 1
    agent.heartbeat("gpu-01")
    assert len(Node.objects.get(name="gpu-01").gpus) == 2
    nvidia_smi.answer = UNREADABLE[1]
    clock.now += agent.GPU_RESCAN_SECONDS + 1
    agent.heartbeat("gpu-01")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 2 and "Insufficient Permissions" in warned[1]
