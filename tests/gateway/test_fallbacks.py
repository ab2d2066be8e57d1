"""Endpoint fallbacks through a real gateway: each hop is checked as the first (team, key scopes), a
fallback into another team (a row from before the service refused them) is never followed, and a request
is priced and metered by the endpoint that answered."""

from __future__ import annotations

from decimal import Decimal

import pytest

from serving.gateway.models import UsageEvent
from serving.models import Replica
from tests.gateway.conftest import chat, flush_settled, wait_for_model, wait_for_table

pytestmark = pytest.mark.django_db(transaction=True)


def down(base: str, stack: dict, deployment) -> None:
    """The deployment's replicas stop being ready (and the routing table sees it): its endpoint falls back."""
    Replica.objects.filter(deployment=deployment).update(state="starting")
    wait_for_table(base, stack, deployment)


def test_a_fallback_into_another_team_is_never_followed(gateway_url, stack, other_team):
    theirs, their_engines = stack["deployment"]("their-dep", owner=other_team)
    their_endpoint = stack["endpoint"]("their-model", theirs, owner=other_team)
    ours, _ = stack["deployment"]("our-dep")
    stack["endpoint"]("our-model", ours, fallback=their_endpoint)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "our-model")
    down(gateway_url, stack, ours)
    wait_for_model(gateway_url, stack["key"](owner=other_team), "their-model")
    response = chat(gateway_url, secret, "our-model")
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_replica_available"
    assert their_engines[0].requests == [], "team B's model never saw team A's request"


def test_a_fallback_outside_the_keys_scopes_is_not_followed(gateway_url, stack):
    spare, spare_engines = stack["deployment"]("spare-dep")
    spare_endpoint = stack["endpoint"]("spare", spare)
    main, _ = stack["deployment"]("main-dep")
    stack["endpoint"]("main", main, fallback=spare_endpoint)
    scoped = stack["key"](scopes=["main"])
    open_key = stack["key"]()
    wait_for_model(gateway_url, scoped, "main")
    down(gateway_url, stack, main)
    assert chat(gateway_url, scoped, "main").status_code == 503
    assert spare_engines[0].requests == []
    assert chat(gateway_url, open_key, "main").status_code == 200, "a key that may call the spare gets it"
    assert len(spare_engines[0].requests) == 1


def test_a_request_is_priced_and_metered_by_the_endpoint_that_answered(gateway_url, stack):
    costly, _ = stack["deployment"]("costly-dep")
    costly_endpoint = stack["endpoint"]("costly", costly, price=("1000000", "1000000"))  # 1 per token
    cheap, _ = stack["deployment"]("cheap-dep")
    stack["endpoint"]("cheap", cheap, price=("1", "1"), fallback=costly_endpoint)
    secret = stack["key"](monthly_budget=Decimal("1000"))
    wait_for_model(gateway_url, secret, "cheap")
    down(gateway_url, stack, cheap)
    response = chat(gateway_url, secret, "cheap")
    assert response.status_code == 200 and response.json()["model"] == "cheap", (
        "the client sees what it called"
    )
    flush_settled()
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.deployment) == ("costly", "costly-dep")
    assert event.cost == Decimal(event.input_tokens + event.output_tokens), (
        "at the answering endpoint's price"
    )
