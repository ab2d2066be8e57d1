"""A heartbeat reports the node's capacity; its GPUs come from nvidia-smi, which a busy or failing driver
can hold for up to 20 s. Asked on every beat, it kept the beats apart for longer than the lost window."""

from __future__ import annotations

import os
import stat

import pytest

from serving import agent


@pytest.fixture
def counting_nvidia_smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that reports one GPU and notes each run in a file."""
    runs = tmp_path / "runs"
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho run >> {runs}\necho '0, NVIDIA H100, 81559'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(agent, "_gpus_seen", None)
    return runs


def test_nvidia_smi_is_asked_once_per_rescan_interval_not_on_every_beat(counting_nvidia_smi, monkeypatch):
    first = agent.detect_capacity()["gpus"]
    for _ in range(5):
        assert agent.detect_capacity()["gpus"] == first
    assert first == [{"index": 0, "name": "NVIDIA H100", "memory_bytes": 81559 * 1024 * 1024}]
    assert counting_nvidia_smi.read_text().count("run") == 1
    monkeypatch.setattr(agent, "GPU_RESCAN_SECONDS", 0)  # the interval passed: asked again
    agent.detect_capacity()
    assert counting_nvidia_smi.read_text().count("run") == 2
