"""The API's errors are the caller's to fix and say so: hostile numbers and characters are a 400 in the one
error shape (never a 500), and every operation's OpenAPI entry declares the errors it can answer."""

import pytest

from portfolio.accounts import personal_tokens
from portfolio.api import api
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

# What the API's exception handlers answer, whatever the operation.
ERRORS = ("400", "401", "403", "404", "409", "422")


@pytest.fixture
def bearer(org):
    _, plaintext = personal_tokens.create_personal_token(
        actor=actor_for(org["admin"]), name="ci", expires_in_days=5
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/teams?page=9223372036854775808",
        "/api/v1/pools?page=99999999999999999999",
        "/api/v1/users?page=9223372036854775807",
        "/api/v1/models?q=%00",
        "/api/v1/models?alias=ab%00cd",
        "/api/v1/models?task=%00",
    ],
)
def test_values_the_database_cannot_take_are_a_400_not_a_500(client, bearer, url):
    response = client.get(url, **bearer)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and "out of range" in error["message"]
    assert error["request_id"] == response["X-Request-ID"]


def test_other_control_characters_in_filters_simply_match_nothing(client, bearer):
    response = client.get("/api/v1/models?q=%01%1b%7f&task=%0a", **bearer)
    assert response.status_code == 200 and response.json() == {"items": [], "count": 0}


def test_every_operation_declares_the_errors_it_can_answer_in_the_error_shape():
    # As served (JSON keys are strings), which is what clients and schemathesis read.
    import json

    schema = json.loads(json.dumps(api.get_openapi_schema(path_prefix="/api/v1")))
    error_ref = "#/components/schemas/ErrorResponse"
    undeclared = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status in ERRORS:
                declared = operation["responses"].get(status)
                if declared is None or declared["content"]["application/json"]["schema"]["$ref"] != error_ref:
                    undeclared.append(f"{method.upper()} {path} {status}")
    assert undeclared == []
    assert schema["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]


def test_the_served_document_is_the_one_with_the_errors(client):
    document = client.get("/api/v1/openapi.json").json()
    assert "401" in document["paths"]["/api/v1/me"]["get"]["responses"]


def test_a_body_past_the_upload_limit_is_a_413_in_the_error_shape(client, bearer, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"name": "' + "x" * 2000 + '", "cost_center": "CC-900"}'
    response = client.post("/api/v1/departments", body, content_type="application/json", **bearer)
    assert response.status_code == 413, response.content
    assert response.json()["error"]["code"] == "too_large"
