"""What the database refuses to compare (a NUL character in a URL or a filter) is a 400 in the UI, as it is
in the REST API, never a 500."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(signed_in, org):
    client = signed_in(org["admin"])
    client.raise_request_exception = False  # a 500 is what we look for, not a raised exception
    return client


@pytest.mark.parametrize("url", ["/deployments/a%00/", "/models/a%00/", "/users/?q=%00"])
def test_a_nul_character_in_a_ui_url_is_a_bad_request(admin_client, url):
    response = admin_client.get(url)
    assert response.status_code == 400
    assert "Bad request" in response.content.decode()


def test_the_api_keeps_its_own_json_answer_to_a_nul_character(admin_client):
    response = admin_client.get("/api/v1/models/a%00")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")


def test_only_what_a_callers_value_causes_is_a_bad_request_a_bug_of_ours_stays_a_500(rf):
    """A value too long for its column (22001) is our write's fault: it stays an error reported as one."""
    from django.db import DataError

    from portfolio.dataerrors import DataErrorMiddleware

    class Cause(Exception):
        def __init__(self, sqlstate):
            super().__init__()
            self.sqlstate = sqlstate

    def raised(sqlstate, message="") -> DataError:
        error = DataError(message)
        error.__cause__ = Cause(sqlstate)
        return error

    middleware = DataErrorMiddleware(lambda request: None)
    request = rf.get("/models/x/")
    assert middleware.process_exception(request, raised("22001", "value too long")) is None
    assert middleware.process_exception(request, raised(None)).status_code == 400  # an empty message too
    assert middleware.process_exception(request, raised("22003", "integer out of range")).status_code == 400
