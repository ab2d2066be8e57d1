"""A heartbeat reports the node's capacity; its GPUs come from nvidia-smi, which a busy or failing driver
can hold for up to 20 s. Asked on every beat, it kept the beats apart for longer than the lost window: it is
asked once per GPU_RESCAN_SECONDS, the beats between report what it said last."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from serving import agent
from serving.choices import PoolKind
from serving.models import ComputePool, Node

pytestmark = pytest.mark.django_db

ONE_GPU = "0, NVIDIA H100, 81559\n"
TWO_GPUS = "0, NVIDIA H100, 81559\n1, NVIDIA H100, 81559\n"


class AgentClock:
    """The agent's `time` module, its monotonic clock at ``now``, where the test moves it."""

    def __init__(self, now: float):
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


class NvidiaSmi:
    """An nvidia-smi on PATH that answers ``answer`` (its CSV) and notes each run in a file."""

    def __init__(self, folder: Path):
        self.answer_file, self.runs_file = folder / "answer", folder / "runs"
        self.answer = ONE_GPU
        self.runs_file.touch()
        script = folder / "bin" / "nvidia-smi"
        script.parent.mkdir()
        script.write_text(f"#!/bin/sh\necho run >> {self.runs_file}\ncat {self.answer_file}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        self.folder = script.parent

    @property
    def answer(self) -> str:
        return self.answer_file.read_text()

    @answer.setter
    def answer(self, csv: str) -> None:
        self.answer_file.write_text(csv)

    @property
    def runs(self) -> int:
        return self.runs_file.read_text().count("run")


@pytest.fixture
def clock(monkeypatch):
    """The agent's clock, starting a rescan interval past now: what an earlier test's heartbeat found is stale."""
    clock = AgentClock(time.monotonic() + agent.GPU_RESCAN_SECONDS)
    monkeypatch.setattr(agent, "time", clock)
    yield clock
    # Leave what this test's nvidia-smi said stale for the tests after it: asked again, with no answer fresh,
    # at the start of time (the agent's clock is the real one again once the test ends).
    monkeypatch.setattr(agent, "GPU_RESCAN_SECONDS", float("-inf"))
    clock.now = float("-inf")
    agent.detect_gpus()


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch, clock):
    fake = NvidiaSmi(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.folder}{os.pathsep}{os.environ['PATH']}")
    return fake


@pytest.fixture
def local_pool(settings):
    settings.NODE_POOL, settings.NODE_ADDRESS = "gpu-pool", "127.0.0.1"
    return ComputePool.objects.create(name="gpu-pool", kind=PoolKind.GPU)


def _gpus_reported() -> int:
    agent.heartbeat("gpu-01")
    return len(Node.objects.get(name="gpu-01").gpus)


def test_heartbeats_within_the_rescan_interval_ask_nvidia_smi_once(nvidia_smi, clock, local_pool):
    assert _gpus_reported() == 1
    nvidia_smi.answer = TWO_GPUS  # a GPU added: seen at the next rescan, not at every beat
    for _ in range(3):
        clock.now += agent.GPU_RESCAN_SECONDS / 3 - 1
        assert _gpus_reported() == 1
    assert nvidia_smi.runs == 1


def test_the_first_heartbeat_after_the_rescan_interval_asks_nvidia_smi_again(nvidia_smi, clock, local_pool):
    assert _gpus_reported() == 1
    nvidia_smi.answer = TWO_GPUS
    clock.now += agent.GPU_RESCAN_SECONDS + 1  # (+1: past it, whatever the float's rounding)
    assert _gpus_reported() == 2
    assert nvidia_smi.runs == 2
    assert Node.objects.get(name="gpu-01").gpus[1] == {
        "index": 1,
        "name": "NVIDIA H100",
        "memory_bytes": 81559 * 2**20,
    }
