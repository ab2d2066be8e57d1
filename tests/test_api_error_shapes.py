"""Everything under /api/ answers in the API's one error shape, ``{"error": {"code", "message", "request_id"}}``,
as the README promises scripts: also a path no route takes, a method a route does not take, a body that is
no JSON, and a query value outside its choices. Not the site's HTML pages."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "request_id"} <= set(body["error"])
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


@pytest.mark.parametrize("signed_in", [False, True])
@pytest.mark.parametrize(
    "url",
    ["/api/v1/nope", "/api/v1/models/", "/api/v1/teams/1/nope", "/api/v1/", "/api/v2/x", "/api/"],
)
def test_a_path_no_route_takes_is_a_404_in_the_error_shape(client, org, signed_in, url):
    if signed_in:
        client.force_login(org["owner"])
    assert_error(client.get(url), 404, "not_found")


def test_an_unsafe_call_to_a_path_no_route_takes_is_a_404_not_a_csrf_page(org):
    """There is nothing to protect there, and a script should learn that the path is wrong."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(org["owner"])
    assert_error(browser.post("/api/v1/nope", {}), 404, "not_found")


@pytest.mark.parametrize(
    "method, url, allowed",
    [
        ("put", "/api/v1/me", {"GET"}),
        ("delete", "/api/v1/models", {"GET", "POST"}),
        ("post", "/api/v1/usage", {"GET"}),
    ],
)
def test_a_method_the_route_does_not_take_is_a_405_in_the_error_shape(client, org, method, url, allowed):
    client.force_login(org["owner"])
    response = getattr(client, method)(url)
    assert_error(response, 405, "method_not_allowed")
    assert set(response["Allow"].replace(" ", "").split(",")) == allowed


def test_the_pages_under_api_that_are_no_operations_still_answer_and_other_404s_stay_pages(client):
    assert client.get("/api/docs")["Location"] == "/api/v1/docs"
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.get("/api/v1")["Location"] == "/api/v1/"  # Django's APPEND_SLASH, then the 404 above
    page = client.get("/no/such/page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_a_body_that_is_no_json_is_refused_as_invalid(client, org, team):
    client.force_login(org["engineer"])
    response = client.post("/api/v1/models", b'{"name": "router",', content_type="application/json")
    assert "parse" in assert_error(response, 400, "invalid")["message"]


def test_a_usage_grouping_outside_its_choices_is_refused_not_read_as_by_endpoint(client, org):
    client.force_login(org["owner"])
    error = assert_error(client.get("/api/v1/usage?group_by=teams"), 422, "invalid")
    assert "group_by" in error["fields"]
    for group_by in ("endpoint", "team", "key"):
        assert client.get(f"/api/v1/usage?group_by={group_by}").status_code == 200
