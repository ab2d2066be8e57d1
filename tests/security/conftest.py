"""The security suite drives a real gateway process, as tests/gateway does: the same fixtures, and the
gateway's log under any test that fails."""

from tests.gateway.conftest import (  # noqa: F401 - fixtures and the report hook, used by name
    gateway_process,
    gateway_url,
    pytest_runtest_makereport,
    stack,
)
