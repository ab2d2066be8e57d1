"""Rotating secrets without breaking what was issued under the old ones (README, "Rotating secrets").

- DJANGO_SECRET_KEY: the old key in DJANGO_SECRET_KEY_FALLBACKS keeps sessions signed in; dropped, they end.
- PORTFOLIO_TOKEN_HASH_KEY: the old key in PORTFOLIO_TOKEN_HASH_KEY_PREVIOUS keeps personal tokens and
  gateway API keys working (a real gateway process, configured by its environment); dropped, they are refused.
- Rotating DJANGO_SECRET_KEY changes no other secret in production: each is set on its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.test import Client

from portfolio.accounts import personal_tokens, secrets_hashing
from portfolio.accounts.models import PersonalToken
from serving.gateway import services as key_services
from tests.conftest import PASSWORD, actor_for
from tests.gateway.process import start_gateway, stop_gateway

OLD_KEY, NEW_KEY = "old-django-secret-key-" + "o" * 30, "new-django-secret-key-" + "n" * 30
OLD_HASH_KEY, NEW_HASH_KEY = "old-token-hash-key-" + "h" * 30, "new-token-hash-key-" + "k" * 30


def test_sessions_survive_a_secret_key_rotation_while_the_old_key_is_a_fallback(org, settings):
    settings.SECRET_KEY = OLD_KEY
    active, away = Client(), Client()
    assert active.login(username="engineer", password=PASSWORD) and away.login(
        username="viewer", password=PASSWORD
    )
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    assert active.get("/").status_code == 200  # verified under the fallback, and re-signed with the new key
    settings.SECRET_KEY_FALLBACKS = []  # the grace period is over
    assert active.get("/").status_code == 200
    response = away.get("/")  # not seen during the grace period: signed out
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.django_db
def test_personal_tokens_work_through_a_token_hash_key_rotation_and_new_ones_use_the_new_key(
    client, org, settings
):
    settings.TOKEN_HASH_KEY, settings.TOKEN_HASH_KEY_PREVIOUS = OLD_HASH_KEY.encode(), []
    used, old_token = personal_tokens.create_personal_token(actor=actor_for(org["engineer"]), name="ci")
    _idle, idle_token = personal_tokens.create_personal_token(actor=actor_for(org["viewer"]), name="cron")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {old_token}"}
    settings.TOKEN_HASH_KEY, settings.TOKEN_HASH_KEY_PREVIOUS = NEW_HASH_KEY.encode(), [OLD_HASH_KEY.encode()]
    assert client.get("/api/v1/me", **bearer).status_code == 200
    # Used during the grace period: its hash is stored again under the current key.
    assert PersonalToken.objects.get(pk=used.pk).secret_hash == secrets_hashing.keyed_hash(
        old_token, NEW_HASH_KEY.encode()
    )
    new, new_token = personal_tokens.create_personal_token(actor=actor_for(org["developer"]), name="ci")
    assert PersonalToken.objects.get(pk=new.pk).secret_hash == secrets_hashing.keyed_hash(
        new_token, NEW_HASH_KEY.encode()
    )
    settings.TOKEN_HASH_KEY_PREVIOUS = []  # the old key dropped: what only it hashed no longer verifies
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {idle_token}").status_code == 401
    assert client.get("/api/v1/me", **bearer).status_code == 200
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {new_token}").status_code == 200


def test_a_token_verified_under_a_previous_key_offers_its_hash_under_the_current_one(settings):
    settings.TOKEN_HASH_KEY, settings.TOKEN_HASH_KEY_PREVIOUS = OLD_HASH_KEY.encode(), []
    issued = secrets_hashing.issue("pat")
    settings.TOKEN_HASH_KEY, settings.TOKEN_HASH_KEY_PREVIOUS = NEW_HASH_KEY.encode(), [OLD_HASH_KEY.encode()]
    upgraded = secrets_hashing.upgraded_hash(issued.plaintext, issued.hash)
    assert upgraded == secrets_hashing.keyed_hash(issued.plaintext) != issued.hash
    assert secrets_hashing.upgraded_hash(issued.plaintext, upgraded) is None  # already current
    assert secrets_hashing.upgraded_hash(issued.plaintext[:-1] + "x", issued.hash) is None  # not this token


def models_status(base: str, secret: str) -> int:
    request = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.django_db(transaction=True)
def test_gateway_api_keys_work_through_a_token_hash_key_rotation(org, team, settings, tmp_path):
    settings.TOKEN_HASH_KEY = OLD_HASH_KEY.encode()
    _key, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="before rotation")
    for previous, expected in ((OLD_HASH_KEY, 200), ("", 401)):
        process, base = start_gateway(
            tmp_path / f"gateway-{expected}.log",
            PORTFOLIO_TOKEN_HASH_KEY=NEW_HASH_KEY,
            PORTFOLIO_TOKEN_HASH_KEY_PREVIOUS=previous,
        )
        try:
            assert models_status(base, secret) == expected, (
                previous,
                (tmp_path / f"gateway-{expected}.log").read_text(),
            )
        finally:
            stop_gateway(process)


def test_rotating_the_secret_key_in_production_changes_no_other_secret(tmp_path):
    from tests.test_settings import SECRETS, _production_env, _secret_files, _settings_in

    names = ("TOKEN_HASH_KEY", "ENGINE_KEY_SECRET", "SECRET_KEY_FALLBACKS")
    before = _settings_in(_production_env(tmp_path / "before"), *names)
    after = _settings_in(
        _production_env(
            tmp_path / "after",
            **_secret_files(
                tmp_path / "rotated",
                DJANGO_SECRET_KEY=NEW_KEY,
                DJANGO_SECRET_KEY_FALLBACKS=SECRETS["DJANGO_SECRET_KEY"],
            ),
        ),
        *names,
    )
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    before, after = json.loads(before.stdout), json.loads(after.stdout)
    assert (after["TOKEN_HASH_KEY"], after["ENGINE_KEY_SECRET"]) == (
        before["TOKEN_HASH_KEY"],
        before["ENGINE_KEY_SECRET"],
    )
    assert after["SECRET_KEY_FALLBACKS"] == [SECRETS["DJANGO_SECRET_KEY"]]
