"""`make test` in a checkout whose path holds a space: its data folder reaches every check whole, and so does
the clean-up that stops the embedded servers however the checks end. The tools are stand-ins that record
what they were given; the set-up targets (venv, browser...) are taken as done."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each call: the tool, its PORTFOLIO_DATA_DIR, how many arguments it got and the last one.
RECORDER = """#!/bin/sh
for last; do :; done
printf '%s|%s|%s|%s\\n' "$(basename "$0")" "$PORTFOLIO_DATA_DIR" "$#" "$last" >> "$RECORD"
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_test_passes_a_data_folder_with_a_space_whole(tmp_path):
    checkout = tmp_path / "my checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("ruff", "mypy", "python", "pytest"):
        (tools / name).write_text(RECORDER)
        (tools / name).chmod(0o755)
    record = tmp_path / "record"
    done = ["venv", "engine", "browser", "speech", "shellcheck", "oidc-provider"]
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(checkout),
            f"BIN={tools}",
            *(f"-o{t}" for t in done),
            "test",
        ],
        env={"PATH": "/usr/bin:/bin", "RECORD": str(record)},
        check=True,
        capture_output=True,
    )
    calls = [line.split("|") for line in record.read_text().splitlines()]
    data = str(checkout / ".portfolio-test")
    checks = [(tool, folder) for tool, folder, _, _ in calls if folder]
    assert checks == [("mypy", data), ("python", data), ("python", data), ("pytest", data)]
    assert calls[-1] == ["python", "", "3", data]  # the clean-up on exit: -c, its code, the folder whole
