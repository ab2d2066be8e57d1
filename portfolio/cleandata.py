"""`portfolio clean-data` (`make clean-data`): delete the data folder of `portfolio run`, and first stop what a
crashed run left working in it (engines, fine-tune trainers, the embedded PostgreSQL and Redis).

Refused, touching nothing, while a `portfolio run` holds the folder's run lock: its servers would be stopped
and its folder deleted under it. The folder is the launcher's (``PORTFOLIO_DATA_DIR``, else ``.portfolio``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from portfolio import commands, embedded, launcher


def clean(data_dir: Path) -> int:
    """0 when the folder is gone (or was never there); 1 when a `portfolio run` still uses it."""
    if not data_dir.exists():
        print(f"nothing to clean: {data_dir} does not exist")
        return 0
    try:
        with launcher.run_lock(data_dir):  # held to the end: a `portfolio run` starting meanwhile refuses
            launcher.stop_work_under(data_dir)
            embedded.stop_all(data_dir)
            shutil.rmtree(data_dir)
    except launcher.FolderInUse as exc:
        print(
            f"`portfolio run` (pid {exc}) is using {data_dir}: stop it first (Ctrl-C), then clean again; "
            "nothing was stopped or deleted"
        )
        return 1
    print(f"deleted {data_dir}")
    return 0


def main() -> int:
    return clean(commands.data_dir())
