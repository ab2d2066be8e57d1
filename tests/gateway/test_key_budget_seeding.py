"""A key's monthly budget set mid-month starts from what the key spent this month, and a flood of made-up
keys cannot lock out a valid key whose cached record expired."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from serving.gateway import keycache, redis_pipe
from serving.gateway import services as key_services
from serving.gateway.keycache import KeyCache
from serving.gateway.limits import Limiter
from serving.gateway.models import UsageEvent
from tests.conftest import actor_for
from tests.gateway.key_records import key_record


def admit(record, *, tokens: int = 0, money_micros: int = 0):
    async def main():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            return await Limiter(pipe).admit(
                record,
                tokens=tokens,
                money_micros=money_micros,
                revoked_set=f"test:revoked:{uuid.uuid4().hex}",
            )
        finally:
            await pipe.close()

    return asyncio.run(main())


def spent_this_month(key, *, input_tokens: int, output_tokens: int, cost: str = "0") -> None:
    UsageEvent.objects.create(
        event_id=uuid.uuid4().hex,
        at=timezone.now(),
        api_key=key,
        team_id=key.team_id,
        department_id=key.team.department_id,
        endpoint="router",
        kind="chat",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        status=200,
        cost=Decimal(cost),
    )


@pytest.mark.django_db
def test_a_token_budget_set_mid_month_counts_what_the_key_already_spent(org, team):
    owner = actor_for(org["owner"])
    key, _ = key_services.create_key(actor=owner, team=team, name="k")
    spent_this_month(key, input_tokens=600, output_tokens=300)
    key_services.update_key(actor=owner, key=key, monthly_token_budget=1000)
    record = key_record(key_id=key.key_id, team_id=team.pk, monthly_token_budget=1000)
    refused = admit(record, tokens=900)
    assert not refused.ok and refused.reason == "budget" and refused.remaining == 100
    assert admit(record, tokens=100).ok


@pytest.mark.django_db
def test_a_money_budget_set_mid_month_counts_what_the_key_already_spent(org, team):
    owner = actor_for(org["owner"])
    key, _ = key_services.create_key(actor=owner, team=team, name="k")
    spent_this_month(key, input_tokens=10, output_tokens=5, cost="0.90")
    key_services.update_key(actor=owner, key=key, monthly_budget=Decimal("1.00"))
    record = key_record(key_id=key.key_id, team_id=team.pk, monthly_budget_micros=1_000_000)
    refused = admit(record, money_micros=200_000)
    assert not refused.ok and refused.reason == "money" and refused.remaining == 100_000


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_unknown_ids_does_not_lock_out_a_valid_key_whose_record_expired(monkeypatch, org, team):
    _, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    monkeypatch.setattr(keycache, "TTL", 0.1)
    monkeypatch.setattr(keycache, "MAX_PENDING", 4)
    gate = threading.Event()
    real = keycache.load
    valid = secret.split("_")[1]
    monkeypatch.setattr(
        keycache, "load", lambda key_id: real(key_id) if key_id == valid else gate.wait(5) and None
    )

    async def main(cache: KeyCache):
        assert await cache.authenticate(secret) is not None
        await asyncio.sleep(0.2)  # the cached record expired
        flood = [asyncio.ensure_future(cache.authenticate(f"slm_{i:012d}_{'s' * 43}")) for i in range(4)]
        await asyncio.sleep(0.1)  # every lookup slot is taken by an unknown id whose load is stuck
        try:
            return await cache.authenticate(secret)
        finally:
            gate.set()
            await asyncio.gather(*flood)

    record = asyncio.run(main(KeyCache()))
    assert record is not None and record.team_id == team.pk


@pytest.mark.django_db(transaction=True)
def test_a_valid_key_whose_record_expired_keeps_it_while_the_database_fails(monkeypatch, org, team):
    _, secret = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    monkeypatch.setattr(keycache, "TTL", 0.1)

    async def main(cache: KeyCache):
        assert await cache.authenticate(secret) is not None
        await asyncio.sleep(0.2)
        monkeypatch.setattr(keycache, "load", lambda key_id: 1 / 0)  # the database out of reach
        kept = await cache.authenticate(secret)
        monkeypatch.setattr(keycache, "STALE_GRACE", 0.0)
        time.sleep(0.01)
        with pytest.raises(ZeroDivisionError):
            await cache.authenticate(secret)  # past the grace: no last record to fall back on
        return kept

    assert asyncio.run(main(KeyCache())) is not None
