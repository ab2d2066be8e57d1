"""Shared endpoints through a real gateway: a key of team A calls team B's endpoint once B shares it with
A, with A's department or with the organisation; it is listed with its owner, metered to A's team and
department, refused again from the routing refresh after the share is withdrawn, and a key may be scoped
to it. A shared endpoint's fallbacks are followed only as far as the key may call them too."""

from __future__ import annotations

import time

import httpx
import pytest

from serving import services
from serving.gateway.models import UsageEvent
from serving.models import Replica
from tests.conftest import actor_for
from tests.gateway.conftest import chat, flush_settled, wait_for_model, wait_for_table

pytestmark = pytest.mark.django_db(transaction=True)


def listed(base: str, secret: str) -> dict[str, str]:
    """``/v1/models`` as model -> owned_by."""
    response = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert response.status_code == 200
    return {m["id"]: m["owned_by"] for m in response.json()["data"]}


def wait_until_gone(base: str, secret: str, name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while name in listed(base, secret):
        assert time.monotonic() < deadline, f"{name} still listed after the routing refresh"
        time.sleep(0.1)


@pytest.fixture
def theirs(stack, other_team):
    """The other team's endpoint "clause-finder", served by a fake engine."""
    dep, engines = stack["deployment"]("contracts-dep", owner=other_team)
    endpoint = stack["endpoint"]("clause-finder", dep, owner=other_team)
    return endpoint, engines


@pytest.fixture
def admin(org):
    return actor_for(org["admin"])


@pytest.mark.parametrize("target", ["team", "department", "organisation"])
def test_a_key_calls_an_endpoint_shared_with_its_team_its_department_or_everyone(
    gateway_url, stack, theirs, admin, team, department, target
):
    endpoint, engines = theirs
    grant = {
        "team": {"team": team},
        "department": {"department": department},
        "organisation": {"organisation": True},
    }
    services.share_endpoint(actor=admin, endpoint=endpoint, **grant[target])
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "clause-finder")
    assert listed(gateway_url, secret)["clause-finder"] == "contracts", "owned_by names the owning team"
    response = chat(gateway_url, secret, "clause-finder")
    assert response.status_code == 200, response.text
    assert len(engines[0].requests) == 1
    flush_settled()
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.team_id, event.department_id) == ("clause-finder", team.pk, department.pk)


def test_an_endpoint_not_shared_is_not_found_and_not_listed(gateway_url, stack, theirs, other_team):
    endpoint, engines = theirs
    wait_for_model(gateway_url, stack["key"](owner=other_team), "clause-finder")
    secret = stack["key"]()
    # The gateway's table may still hold the previous test's share of an endpoint of the same id until its
    # next refresh: polled, so that only a table that goes on listing it fails.
    deadline = time.monotonic() + 15
    while "clause-finder" in listed(gateway_url, secret) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "clause-finder" not in listed(gateway_url, secret)
    response = chat(gateway_url, secret, "clause-finder")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert engines[0].requests == []


def test_a_share_with_another_department_does_not_reach_this_one(
    gateway_url, stack, theirs, admin, other_department, other_team
):
    endpoint, _ = theirs
    services.share_endpoint(actor=admin, endpoint=endpoint, department=other_department)
    wait_for_model(gateway_url, stack["key"](owner=other_team), "clause-finder")
    assert chat(gateway_url, stack["key"](), "clause-finder").status_code == 404


def test_unsharing_takes_effect_after_the_routing_refresh(gateway_url, stack, theirs, admin, team):
    endpoint, _ = theirs
    services.share_endpoint(actor=admin, endpoint=endpoint, team=team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "clause-finder")
    assert chat(gateway_url, secret, "clause-finder").status_code == 200
    services.unshare_endpoint(actor=admin, endpoint=endpoint, team=team)
    wait_until_gone(gateway_url, secret, "clause-finder")
    response = chat(gateway_url, secret, "clause-finder")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_key_scoped_to_the_shared_name_calls_it_and_one_scoped_elsewhere_does_not(
    gateway_url, stack, theirs, admin, team
):
    endpoint, _ = theirs
    ours, _ = stack["deployment"]("support-dep")
    stack["endpoint"]("support", ours)
    services.share_endpoint(actor=admin, endpoint=endpoint, organisation=True)
    scoped = stack["key"](scopes=["clause-finder"])
    elsewhere = stack["key"](scopes=["support"])
    wait_for_model(gateway_url, scoped, "clause-finder")
    assert set(listed(gateway_url, scoped)) == {"clause-finder"}
    assert chat(gateway_url, scoped, "clause-finder").status_code == 200
    assert chat(gateway_url, scoped, "support").status_code == 404
    assert "clause-finder" not in listed(gateway_url, elsewhere)
    assert chat(gateway_url, elsewhere, "clause-finder").status_code == 404


def test_a_shared_endpoints_fallback_is_followed_only_when_the_key_may_call_it(
    gateway_url, stack, admin, team, other_team
):
    spare_dep, spare_engines = stack["deployment"]("spare-dep", owner=other_team)
    spare = stack["endpoint"]("spare", spare_dep, owner=other_team)
    main_dep, _ = stack["deployment"]("main-dep", owner=other_team)
    main = stack["endpoint"]("main", main_dep, owner=other_team, fallback=spare)
    services.share_endpoint(actor=admin, endpoint=main, team=team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "main")
    Replica.objects.filter(deployment=main_dep).update(state="starting")
    wait_for_table(gateway_url, stack, main_dep)
    assert chat(gateway_url, secret, "main").status_code == 503, "the spare is not shared with the caller"
    assert spare_engines[0].requests == []
    services.share_endpoint(actor=admin, endpoint=spare, team=team)
    wait_for_model(gateway_url, secret, "spare")
    assert chat(gateway_url, secret, "main").status_code == 200
    assert len(spare_engines[0].requests) == 1
