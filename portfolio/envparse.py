"""Strict parsing of settings from environment variables.

A bad value stops start-up with a message naming the variable; secrets may also come from a file named
by ``NAME_FILE`` (Docker/Kubernetes secrets), which wins over nothing but is refused next to ``NAME``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Env:
    """Reads typed values from a mapping (``os.environ`` by default) and fails loudly on bad ones."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        file_name = self.environ.get(f"{name}_FILE")
        if value is not None and file_name:
            raise ImproperlyConfigured(f"Set either {name} or {name}_FILE, not both.")
        if file_name:
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}") from exc
        if value is not None and value.strip() == "":
            return None
        return value

    def _parse(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value.strip())
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected {expected}.") from exc

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ImproperlyConfigured(f"{name} must be set (or {name}_FILE).")
        return value

    def flag(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool:
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(value)

        return self._parse(name, default, parse, "one of true/false/1/0/yes/no/on/off")

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._parse(name, default, int, "an integer")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            raise ImproperlyConfigured(f"{name}={value} is out of range [{minimum}, {maximum}].")
        return value

    def csv_list(self, name: str, default: list[str]) -> list[str]:
        return self._parse(
            name, default, lambda v: [item.strip() for item in v.split(",") if item.strip()], "a comma list"
        )

    def choice(self, name: str, default: str, choices: set[str]) -> str:
        value = self.text(name, default) or default
        if value not in choices:
            raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected one of {sorted(choices)}.")
        return value

    def path(self, name: str, default: Path) -> Path:
        return self._parse(name, default, lambda v: Path(v).expanduser().resolve(), "a path")
