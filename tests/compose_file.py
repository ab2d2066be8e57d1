"""What the tests of docker-compose.yml share (tests/test_compose*.py): where it is, the platform's own
services, and a service's environment as compose gives it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_SERVICES = {"migrate", "web", "worker", "worker-long", "beat", "node-cpu", "node-gpu"}


def interpolated(value) -> str:
    """A value as compose gives it with none of the operator's variables set (``${NAME:-default}``)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def env_of(compose: dict, service: str) -> dict[str, str]:
    return {key: interpolated(value) for key, value in compose["services"][service]["environment"].items()}
