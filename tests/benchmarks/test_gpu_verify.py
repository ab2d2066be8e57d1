"""benchmarks/gpu/verify.sh, which only a GPU machine runs: it parses, lints clean, and where it cannot start
it still prints one JSON line saying why (as on this machine, which has no NVIDIA driver)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "verify.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_script_is_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_without_a_gpu_it_says_so_in_one_json_line(tmp_path):
    # A PATH with bash and coreutils but no nvidia-smi, whatever this machine has.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    result = subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(bin_dir)}
    )
    assert result.returncode == 2
    line = json.loads(result.stdout.strip())
    assert line["ok"] is False and line["stage"] == "preflight" and "nvidia-smi" in line["error"]


def test_an_unknown_argument_is_refused_in_one_json_line():
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == "unknown argument: --fast"


def test_an_image_python_needs_the_wheels_the_image_lacks():
    result = subprocess.run(["bash", str(SCRIPT), "--python", "python3"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--python needs --wheels" in json.loads(result.stdout)["error"]


def test_a_python_that_is_not_there_is_refused():
    result = subprocess.run(
        ["bash", str(SCRIPT), "--python", "no-such-python3"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == "--python needs a Python interpreter"
