"""What the tests of docker-compose.yml share (tests/test_compose*.py): where it is, the platform's own
services, and a service's environment as compose gives it."""

import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_SERVICES = {"migrate", "web", "worker", "worker-long", "beat", "node-cpu", "node-gpu"}


# The innermost ``${NAME:-default}``: a default may hold another (compose interpolates them nested).
DEFAULTED = re.compile(r"\$\{([A-Z_]+):-([^${}]*)\}")


def interpolated(value, variables: Mapping[str, str] | None = None) -> str:
    """A value as compose gives it (``${NAME:-default}``, nested ones too) with the operator's ``variables``
    set, none unless given."""
    given = variables or {}
    text, before = str(value), None
    while text != before:
        before, text = text, DEFAULTED.sub(lambda match: given.get(match[1]) or match[2], text)
    return text


def env_of(compose: dict, service: str) -> dict[str, str]:
    return {key: interpolated(value) for key, value in compose["services"][service]["environment"].items()}
