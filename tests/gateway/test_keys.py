"""The key checks the gateway's trust rests on, each tested on its own so that removing any one fails a
test: the secret is verified, not just the key id; a revoked key is refused by the key cache's own flag
(without the Redis set), and by the Redis revocation set (without the cache knowing)."""

from __future__ import annotations

import time

import httpx
import pytest

from serving.gateway import keystate
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from tests.conftest import actor_for
from tests.gateway.conftest import chat, wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)


def models(base: str, secret: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=20)


def test_a_key_with_the_right_id_and_a_wrong_secret_is_refused(gateway_url, stack):
    dep, engines = stack["deployment"]("secret-dep")
    stack["endpoint"]("guarded", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "guarded")
    prefix, key_id, real = secret.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(real)}"
    assert chat(gateway_url, secret, "guarded").status_code == 200, "the cache holds the key now"
    for presented in (forged, f"{prefix}_{key_id}_{real[:-1]}B"):
        response = chat(gateway_url, presented, "guarded")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert models(gateway_url, presented).status_code == 401
    assert len(engines[0].requests) == 1


def test_a_revoked_key_is_refused_by_the_cache_even_if_redis_forgot_it(gateway_url, stack, org):
    dep, engines = stack["deployment"]("flag-dep")
    stack["endpoint"]("flagged", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "flagged")
    key = ApiKey.objects.get()
    key_services.revoke_key(actor=actor_for(org["owner"]), key=key)
    keystate.client().zrem(keystate.REVOKED_SET, key.key_id)  # e.g. a Redis restarted without persistence
    assert models(gateway_url, secret).status_code == 401, "a revoked key lists nothing"
    assert chat(gateway_url, secret, "flagged").status_code == 401
    assert engines[0].requests == []


def test_a_key_in_the_revocation_set_is_refused_even_if_the_cache_missed_the_news(gateway_url, stack):
    dep, engines = stack["deployment"]("set-dep")
    stack["endpoint"]("listed", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "listed")
    assert chat(gateway_url, secret, "listed").status_code == 200, "the cache holds the key, unrevoked"
    # Revoked elsewhere, and the invalidation message never arrived: only the set says so.
    keystate.mark_revoked(ApiKey.objects.get().key_id)
    assert chat(gateway_url, secret, "listed").status_code == 401
    assert models(gateway_url, secret).status_code == 401
    assert len(engines[0].requests) == 1


def test_the_revocation_set_forgets_entries_older_than_any_cached_key_and_expires(monkeypatch):
    redis = keystate.client()
    redis.delete(keystate.REVOKED_SET)
    now = time.time()
    monkeypatch.setattr(keystate.time, "time", lambda: now - keystate.REVOKED_RETENTION_SECONDS - 5)
    keystate.mark_revoked("oldoldoldold")
    monkeypatch.setattr(keystate.time, "time", lambda: now)
    keystate.mark_revoked("newnewnewnew")
    assert [m.decode() for m in redis.zrange(keystate.REVOKED_SET, 0, -1)] == ["newnewnewnew"]
    assert 0 < redis.ttl(keystate.REVOKED_SET) <= keystate.REVOKED_RETENTION_SECONDS
