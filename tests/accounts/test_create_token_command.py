"""`portfolio manage create_token`: a personal access token without a browser, printed once alone on standard
output (for `TOKEN=$(...)`), never logged, audited as a token made in the UI is."""

import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from portfolio.accounts import personal_tokens
from portfolio.accounts.models import PersonalToken
from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _create(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_token_is_printed_alone_on_stdout_and_signs_its_user_in(org):
    out, err = _create("--user", "engineer", "--name", "nightly eval", "--expires-days", "7")
    plaintext = out.strip()
    assert out.count("\n") == 1 and plaintext.startswith("pat_")
    token = personal_tokens.authenticate_token(plaintext)
    assert token is not None and token.user == org["engineer"] and token.name == "nightly eval"
    assert round((token.expires_at - token.created_at).total_seconds() / 86400) == 7
    assert plaintext not in err and "nightly eval" in err


def test_the_token_is_audited_like_one_made_in_the_ui_and_never_logged(org, caplog):
    with caplog.at_level(logging.DEBUG):
        out, _ = _create("--user", "developer", "--name", "ci")
    secret = out.strip().split("_", 2)[2]
    event = AuditEvent.objects.get(action="token.create")
    assert (event.actor_kind, event.actor_label) == ("user", "developer")
    assert event.user_agent == "portfolio manage create_token"
    assert event.after["name"] == "ci"
    assert secret not in str(event.before) + str(event.after) + event.object_repr
    assert secret not in caplog.text


def test_an_unknown_or_inactive_user_gets_no_token(org):
    org["viewer"].is_active = False
    org["viewer"].save(update_fields=["is_active"])
    for user in ("nobody", "viewer"):
        with pytest.raises(CommandError, match="No active user"):
            _create("--user", user, "--name", "ci")
    assert not PersonalToken.objects.exists()


def test_an_expiry_past_the_limit_is_refused_with_the_services_reason(org, settings):
    settings.PERSONAL_TOKEN_MAX_DAYS = 30
    with pytest.raises(CommandError, match="Choose between 1 and 30 days"):
        _create("--user", "engineer", "--name", "ci", "--expires-days", "31")
    assert not PersonalToken.objects.exists()
