"""The security suite drives a real gateway process, as tests/gateway does: the same fixtures, and the
gateway's log under any test that fails."""

from tests.gateway.conftest import (  # noqa: F401 - fixtures and the report hook, used by name
    gateway_process,
    gateway_url,
    pytest_runtest_makereport,
    stack,
)
from tests.test_route_permissions import world  # noqa: F401 - the objects of every route, as that test has them
