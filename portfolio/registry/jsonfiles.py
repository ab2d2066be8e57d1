"""Reading a model's small files (``config.json``, ``adapter_config.json``, ``tokenizer_config.json``…) with
a cap on what is read into memory.

A model's files come from tenants: a 10 MB zip can expand into a 2 GB ``config.json``, and reading that
whole takes the worker down. Every such file is measured before a byte of it is parsed: here
(``read_json``), and before transformers or peft read a folder (``refuse_oversized``). A file past its cap
is refused with an error naming the file and the cap, never truncated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# Configs are a few KB; the largest real ones (a tokenizer config listing thousands of added tokens) a few MB.
MAX_JSON_BYTES = 16 * MIB
# A tokenizer's vocabulary is the one large file transformers reads whole (Gemma 3's tokenizer.json: 33 MB).
MAX_VOCABULARY_BYTES = 128 * MIB

# Files of a model folder that transformers or peft read whole into memory, with their caps.
CAPS: dict[str, int] = {
    "config.json": MAX_JSON_BYTES,
    "adapter_config.json": MAX_JSON_BYTES,
    "tokenizer_config.json": MAX_JSON_BYTES,
    "generation_config.json": MAX_JSON_BYTES,
    "special_tokens_map.json": MAX_JSON_BYTES,
    "added_tokens.json": MAX_JSON_BYTES,
    "chat_template.json": MAX_JSON_BYTES,
    "chat_template.jinja": MAX_JSON_BYTES,
    "preprocessor_config.json": MAX_JSON_BYTES,
    "processor_config.json": MAX_JSON_BYTES,
    "tokenizer.json": MAX_VOCABULARY_BYTES,
    "vocab.json": MAX_VOCABULARY_BYTES,
    "vocab.txt": MAX_VOCABULARY_BYTES,
    "merges.txt": MAX_VOCABULARY_BYTES,
    "tokenizer.model": MAX_VOCABULARY_BYTES,
}


class FileTooLarge(ValueError):
    """A model file past the cap on what may be read into memory (``size`` None: past it, found reading)."""

    def __init__(self, name: str, size: int | None, cap: int):
        measured = f"{size:,} bytes" if size is not None else f"over {cap:,} bytes"
        in_mib = f" ({cap // MIB} MiB)" if cap >= MIB else ""
        super().__init__(
            f"{name} is {measured}; files of this kind are read whole into memory and capped at {cap:,} bytes"
            f"{in_mib}."
        )
        self.name, self.size, self.cap = name, size, cap


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, refused with ``FileTooLarge`` past ``limit`` (measured while reading too, so a
    file that grows after it was measured cannot get past)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise FileTooLarge(path.name, size, limit)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path.name, None, limit)
    return data


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``, read with a cap. ``FileTooLarge`` past it, ``ValueError`` (a
    ``json.JSONDecodeError`` or ``UnicodeDecodeError``) for what is not JSON."""
    return json.loads(read_capped(path, limit).decode("utf-8"))


def refuse_oversized(folder: Path) -> None:
    """Raise ``FileTooLarge`` for the first file of ``folder`` that transformers or peft would read whole and
    that is past its cap; call before ``from_pretrained`` on a folder of tenant files."""
    for path in sorted(folder.iterdir()):
        cap = CAPS.get(path.name) or (MAX_VOCABULARY_BYTES if path.suffix == ".tiktoken" else None)
        if cap is not None and path.is_file() and (size := path.stat().st_size) > cap:
            raise FileTooLarge(path.name, size, cap)
