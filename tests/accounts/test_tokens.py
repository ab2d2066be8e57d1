"""Personal access tokens: shown once, stored as a keyed hash, never logged, refused once revoked."""

import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.accounts import personal_tokens
from portfolio.accounts.models import PersonalToken
from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def issued(org):
    return personal_tokens.create_personal_token(
        actor=actor_for(org["engineer"]), name="ci", expires_in_days=30
    )


def _bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_the_token_is_returned_once_and_only_its_keyed_hash_is_stored(issued):
    token, plaintext = issued
    assert plaintext.startswith(f"pat_{token.key_id}_")
    stored = PersonalToken.objects.filter(pk=token.pk).values().get()
    assert plaintext not in str(stored)
    assert stored["secret_hash"] != plaintext and len(stored["secret_hash"]) == 64


def test_the_token_never_reaches_audit_rows(issued):
    _, plaintext = issued
    secret = plaintext.split("_", 2)[2]
    for event in AuditEvent.objects.all():
        assert secret not in str(event.before) + str(event.after) + event.object_repr


def test_a_token_authenticates_api_calls_and_is_never_logged(client, issued, caplog):
    _, plaintext = issued
    caplog.set_level(logging.DEBUG)
    response = client.get("/api/v1/me", **_bearer(plaintext))
    assert response.status_code == 200
    assert response.json()["username"] == "engineer"
    bad = client.get("/api/v1/me", **_bearer(plaintext[:-2] + "xx"))
    assert bad.status_code == 401
    logging.getLogger("portfolio").warning("caller sent %s", plaintext)  # even a careless log line
    secret = plaintext.split("_", 2)[2]
    assert secret not in caplog.text
    assert all(secret not in handler_text for handler_text in _formatted(caplog))


def _formatted(caplog) -> list[str]:
    from portfolio.redaction import RedactSecretsFilter

    redactor = RedactSecretsFilter()
    texts = []
    for record in caplog.records:
        redactor.filter(record)
        texts.append(record.getMessage())
    return texts


def test_a_revoked_token_is_refused_at_once(client, org, issued):
    token, plaintext = issued
    assert client.get("/api/v1/me", **_bearer(plaintext)).status_code == 200
    personal_tokens.revoke_personal_token(actor=actor_for(org["engineer"]), token=token)
    assert client.get("/api/v1/me", **_bearer(plaintext)).status_code == 401
    assert AuditEvent.objects.filter(action="token.revoke").exists()


def test_an_expired_token_is_refused(client, issued):
    token, plaintext = issued
    PersonalToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/me", **_bearer(plaintext)).status_code == 401


def test_a_token_cannot_mint_another_token(client, issued):
    _, plaintext = issued
    response = client.post(
        "/api/v1/tokens", {"name": "child"}, content_type="application/json", **_bearer(plaintext)
    )
    assert response.status_code == 400
    assert "signed-in user" in response.json()["error"]["message"]


def test_someone_elses_token_cannot_be_revoked(client, org, issued):
    token, _ = issued
    client.force_login(org["owner"])
    assert client.delete(f"/api/v1/tokens/{token.pk}").status_code == 404


def test_expiry_beyond_the_limit_is_refused(org):
    with pytest.raises(Invalid, match="expires_in_days"):
        personal_tokens.create_personal_token(
            actor=actor_for(org["viewer"]), name="forever", expires_in_days=10_000
        )


@pytest.mark.parametrize(
    "header",
    ["Bearer ' OR 1=1 --", "Bearer " + "A" * 100_00, "Basic Zm9vOmJhcg==", "Bearer pat_short_x", "Bearer"],
)
def test_garbage_in_the_authorization_header_gets_401(client, header):
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_the_api_answer_with_a_new_token_is_kept_by_no_cache(client, org):
    client.force_login(org["engineer"])
    response = client.post("/api/v1/tokens", {"name": "ci"}, content_type="application/json")
    assert response.status_code == 201 and response.json()["token"].startswith("pat_")
    assert "no-store" in response["Cache-Control"]


def test_a_crash_after_issuing_a_token_keeps_it_out_of_the_error_report(client, org, monkeypatch):
    """Django's error report (mailed to admins) shows each frame's locals: no frame below the view may show
    the token, wherever it sits (``result``, the form helper's locals)."""
    from django.views.debug import ExceptionReporter

    from portfolio.accounts.views import tokens as token_views

    issued = []
    create = personal_tokens.create_personal_token
    monkeypatch.setattr(
        personal_tokens, "create_personal_token", lambda **kw: issued.append(create(**kw)) or issued[0]
    )
    monkeypatch.setattr(token_views, "render", lambda *args: 1 / 0)  # fails while showing the token
    client.force_login(org["engineer"])
    with pytest.raises(ZeroDivisionError) as crash:
        client.post(reverse("token-create"), {"name": "ci", "expires_in_days": 30})
    secret = issued[0][1].split("_", 2)[2]
    frames = ExceptionReporter(None, crash.type, crash.value, crash.tb).get_traceback_frames()
    assert {"token_create", "submit"} <= {frame["function"] for frame in frames}
    for frame in frames[1:]:  # the first is this test's own
        assert secret not in str(frame["vars"]), frame["function"]
