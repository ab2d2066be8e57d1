"""A key's monthly budget survives Redis losing its counters (a restart without persistence, an eviction, a
FLUSHDB): the gateway loads a key with a budget together with what it spent this month on the ledger, and
admission starts a lost counter from that spend instead of from nothing."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from serving.gateway import keycache, keystate, usage
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey, UsageEvent
from tests.conftest import actor_for
from tests.gateway.conftest import chat, wait_for_model
from tests.gateway.key_records import key_record
from tests.gateway.process import start_gateway, stop_gateway
from tests.gateway.test_key_budget_seeding import admit

pytestmark = pytest.mark.django_db(transaction=True)


def lose_budget_counters(key_id: str) -> None:
    """What a Redis restarted without persistence does to the key's monthly counters."""
    redis = keystate.client()
    names = [*redis.scan_iter(f"gw:bt:{key_id}:*"), *redis.scan_iter(f"gw:bm:{key_id}:*")]
    assert names, "the key's budget counters were in Redis"
    redis.delete(*names)


def stored_calls(key: ApiKey, count: int) -> None:
    """Flush usage until the key's ``count`` answered calls are on the ledger (each call's settlement is
    written with its event, so its counter is settled too)."""
    deadline = time.monotonic() + 10
    while UsageEvent.objects.filter(api_key=key, status=200).count() < count:
        assert time.monotonic() < deadline, "the calls' usage events never reached the ledger"
        usage.flush()
        time.sleep(0.05)


def test_a_key_that_spent_its_token_budget_is_still_refused_after_redis_loses_its_counters(
    gateway_url, stack, tmp_path
):
    dep, _ = stack["deployment"]("spent-dep")
    stack["endpoint"]("spent", dep)
    # A call reserves 341 tokens (its prompt's bound and 200) and bills 210: one call fits, not a second.
    secret = stack["key"](monthly_token_budget=400)
    key = ApiKey.objects.get()
    wait_for_model(gateway_url, secret, "spent")
    first = chat(gateway_url, secret, "spent", max_tokens=200)
    assert first.status_code == 200, first.text
    stored_calls(key, 1)
    refused = chat(gateway_url, secret, "spent", max_tokens=200)
    assert refused.status_code == 429 and "the 190 tokens left" in refused.json()["error"]["message"]

    lose_budget_counters(key.key_id)
    process, base = start_gateway(tmp_path / "restarted-gateway.log")  # a cold key cache loads the key
    try:
        wait_for_model(base, secret, "spent")
        again = chat(base, secret, "spent", max_tokens=200)
    finally:
        stop_gateway(process)
    assert again.status_code == 429, "the lost counter started from nothing: the budget was spent twice"
    error = again.json()["error"]
    assert error["code"] == "insufficient_quota" and "the 190 tokens left" in error["message"], error


def test_a_lost_money_counter_starts_from_the_keys_spend_this_month(org, team):
    key, _ = key_services.create_key(
        actor=actor_for(org["owner"]), team=team, name="k", monthly_budget=Decimal("1.00")
    )
    UsageEvent.objects.create(
        event_id=uuid.uuid4().hex,
        at=timezone.now(),
        api_key=key,
        team_id=team.pk,
        department_id=team.department_id,
        endpoint="router",
        kind="chat",
        input_tokens=10,
        output_tokens=5,
        status=200,
        cost=Decimal("0.90"),
    )
    record = keycache.load(key.key_id)  # no counter in Redis: as after a loss
    refused = admit(record, money_micros=200_000)
    assert not refused.ok and refused.reason == "money" and refused.remaining == 100_000
    assert admit(record, money_micros=100_000).ok


def test_a_spend_measured_last_month_does_not_start_this_months_counter():
    record = key_record(monthly_token_budget=1_000, spend_month="199912", token_spend=1_000)
    assert admit(record, tokens=1_000).ok


def test_a_key_is_loaded_in_one_query_and_its_spend_measured_only_when_it_has_a_budget(
    org, team, django_assert_num_queries
):
    owner = actor_for(org["owner"])
    plain, _ = key_services.create_key(actor=owner, team=team, name="plain", rpm_limit=10)
    budgeted, _ = key_services.create_key(actor=owner, team=team, name="budgeted", monthly_token_budget=10)
    with django_assert_num_queries(1):
        keycache.load(plain.key_id)
    with django_assert_num_queries(2):
        keycache.load(budgeted.key_id)
