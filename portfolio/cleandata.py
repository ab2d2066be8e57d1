"""`portfolio clean-data` (`make clean-data`): delete the data folder of `portfolio run`, and first stop what a
crashed run left working in it (engines, fine-tune trainers, the embedded PostgreSQL and Redis).

Refused, touching nothing, while a `portfolio run` holds the folder's run lock: its servers would be stopped
and its folder deleted under it. The folder is the launcher's (``PORTFOLIO_DATA_DIR``, else ``.portfolio``).
Refused as well with ``PORTFOLIO_ENV=production`` (the image sets ``PORTFOLIO_DATA_DIR=/var/lib/portfolio``:
`docker compose exec web portfolio clean-data` would delete a production node's data), and for a folder
that holds nothing `portfolio run` makes (a mistyped ``PORTFOLIO_DATA_DIR`` naming someone's documents).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from portfolio import commands, embedded, launcher

# What only this platform leaves in its data folder: the run lock every `portfolio run` takes first, and the
# embedded PostgreSQL's initialised cluster (a folder where a process ran on the embedded servers without the
# launcher). A folder holding neither is not one of its, whatever else it holds: `logs` or `redis` are
# names anyone's folder may have (`mkdir -p /tmp/x/logs` must not make /tmp/x deletable).
RUN_MARKS = ("run.lock", "pgdata/PG_VERSION")


def clean(data_dir: Path) -> int:
    """0 when the folder is gone (or was never there); 1 when a `portfolio run` still uses it, in production,
    or when the folder is not one `portfolio run` made."""
    if os.environ.get("PORTFOLIO_ENV", "").strip() == "production":
        print(
            "clean-data deletes the data folder of `portfolio run`, the demo: not with PORTFOLIO_ENV=production"
        )
        return 1
    if not data_dir.exists():
        print(f"nothing to clean: {data_dir} does not exist")
        return 0
    if not any((data_dir / mark).exists() for mark in RUN_MARKS):
        print(f"{data_dir} holds nothing `portfolio run` makes ({', '.join(RUN_MARKS)}): not deleted")
        return 1
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
