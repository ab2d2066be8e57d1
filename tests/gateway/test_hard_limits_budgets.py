"""Hard limits as billing sets them: the routing table carries them, a gateway counter starts from (and
catches up with) the ledger's spend, a real gateway refuses a call past one, and a deployment cannot scale
up (nor a job start) once one is used up. The admission script's own tests: tests/gateway/test_hard_limits.py.

End to end, a key calls its own team's endpoints, which statements do not charge, so a hard limit never
refuses those; and another team's shared endpoint, which they charge."""

from __future__ import annotations

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.billing import budgets
from portfolio.billing.models import Budget
from portfolio.errors import Conflict
from serving.gateway.routing import EndpointInfo, Route, Snapshot, build_snapshot
from serving.services import deployments
from tests.conftest import actor_for
from tests.gateway.conftest import wait_for_model
from tests.gateway.spend_counters import call, counter, record, run


@pytest.mark.django_db(transaction=True)
def test_the_routing_table_carries_the_hard_limits(org, team, department):
    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="12.50", hard_limit=True)
    budgets.set_budget(actor=admin, department=department, amount="100")  # no hard limit: not carried
    assert build_snapshot().caps == {("team", team.pk): (12_500_000, 0)}


CONTRACTS_ID = 4242  # other_team's endpoint: its calls are charged to the caller


def spent_on_the_ledger(team, other_team, money: int) -> None:
    """``team`` has spent ``money`` this month calling other_team's endpoint (one unit an input token)."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from portfolio.billing import meters
    from portfolio.billing.choices import PriceKind
    from portfolio.billing.meters import TokenHour
    from portfolio.billing.models import Price

    Price.objects.get_or_create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(CONTRACTS_ID),
        defaults={
            "subject_name": "contracts-llm",
            "effective_from": datetime(2000, 1, 1, tzinfo=UTC),
            "input_per_million": Decimal("1000000"),
            "output_per_million": Decimal("0"),
        },
    )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    meters.replace_token_hours(
        hour,
        hour + timedelta(hours=1),
        [TokenHour(hour, CONTRACTS_ID, "contracts-llm", other_team.pk, other_team.department_id, "contracts-dep",
                   team.pk, team.department_id, 1, money, 0)],
    )  # fmt: skip


@pytest.fixture
def fresh_counters(team):
    """The team's and its department's counters, emptied: database ids repeat across tests."""
    import redis

    month = timezone.now().strftime("%Y%m")
    names = (f"gw:tm:{team.pk}:{month}", f"gw:dm:{team.department_id}:{month}")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(*names)
    yield
    client.delete(*names)
    client.close()


def call_contracts(team, other_team):
    """A call from ``team`` to other_team's endpoint that may cost 20 (a unit a token), admitted against
    the hard limits the routing table reads now; it costs 15."""
    from serving.gateway import payloads

    hop = EndpointInfo(
        "contracts-llm",
        other_team.pk,
        (Route(1, "contracts-dep", "contracts-dep", "", 1),),
        None,
        1_000_000.0,
        1_000_000.0,
        100,
        department_id=other_team.department_id,
    )
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    snapshot = Snapshot(caps=budgets.hard_limits())
    return run(call(snapshot, record(team.pk, team.department_id), hop, shape, (10, 5)))


@pytest.mark.django_db
def test_a_hard_limit_set_below_the_months_spend_refuses_the_next_call(org, team, other_team, fresh_counters):
    """The budget is set mid-month, before billing.check_budgets has measured anything for it: the
    gateway's counter must still start from the 900 already spent, not from 0."""
    spent_on_the_ledger(team, other_team, 900)
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="910", hard_limit=True)
    refused = call_contracts(team, other_team)
    assert not refused.ok and refused.reason == "team_budget"
    assert refused.remaining == 10_000_000


@pytest.mark.django_db
def test_turning_a_hard_limit_off_and_on_measures_the_spend_again(org, team, other_team):
    from decimal import Decimal

    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=True)
    spent_on_the_ledger(team, other_team, 900)
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=False)
    assert Budget.objects.get(team=team).token_spend == 0, "measured only when a hard limit starts"
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=True)
    assert Budget.objects.get(team=team).token_spend == Decimal("900.00")
    assert budgets.hard_limits()[("team", team.pk)] == (910_000_000, 900_000_000)


@pytest.mark.django_db
def test_a_counter_made_before_the_spend_was_measured_catches_up_with_the_ledger(
    org, team, other_team, fresh_counters
):
    """The gateway's first call made the counter from no spend; the ledger then shows 900 spent (calls
    through other gateway processes, a counter Redis lost) and billing.check_budgets stores it: from
    then on the counter holds it too, though it already existed."""
    from portfolio.billing import alerts

    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="910", hard_limit=True)
    assert call_contracts(team, other_team).ok
    spent_on_the_ledger(team, other_team, 900)  # the 15 just settled among them
    alerts.check()
    refused = call_contracts(team, other_team)
    assert not refused.ok and refused.reason == "team_budget"
    assert counter(f"gw:tm:{team.pk}") == 900_000_000


@pytest.mark.django_db(transaction=True)
def test_a_hard_limit_leaves_a_teams_calls_to_its_own_endpoints_alone(org, team, gateway_url, stack):
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="0", hard_limit=True)
    dep, _ = stack["deployment"]("own-dep")
    stack["endpoint"]("own-llm", dep, price=("1000000", "1000000"))
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "own-llm")
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "own-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.django_db(transaction=True)
def test_a_call_to_another_teams_shared_endpoint_past_the_callers_hard_limit_is_refused(
    org, team, other_team, gateway_url, stack
):
    """Through a real gateway: the calling team pays the other team's token price, so its hard limit bites."""
    from serving.services import endpoints

    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="5", hard_limit=True)
    dep, _ = stack["deployment"]("contracts-dep", owner=other_team)
    # One unit of money per token: even max_tokens=10 could cost more than the 5 the team may spend.
    shared = stack["endpoint"]("clause-finder", dep, owner=other_team, price=("1000000", "1000000"))
    endpoints.share_endpoint(actor=admin, endpoint=shared, team=team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "clause-finder")
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "clause-finder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "budget_exceeded"


@pytest.mark.django_db(transaction=True)
def test_a_scale_up_past_a_hard_limit_is_refused_with_the_reason(org, team, stack):
    admin = actor_for(org["admin"])
    dep, _ = stack["deployment"]("limited-dep", replicas=0)
    budgets.set_budget(actor=admin, team=team, amount="0", hard_limit=True)
    with pytest.raises(Conflict) as refused:
        deployments.scale(actor=admin, deployment=dep, replicas=2)
    assert refused.value.code == "budget_exceeded" and "hard limit" in refused.value.message
    Budget.objects.filter(team=team).update(hard_limit=False)
    assert deployments.scale(actor=admin, deployment=dep, replicas=2).replicas == 2
    Budget.objects.filter(team=team).update(hard_limit=True)
    assert deployments.scale(actor=admin, deployment=dep, replicas=1).replicas == 1, "scaling down is fine"


@pytest.mark.django_db(transaction=True)
def test_a_department_hard_limit_stops_its_teams_jobs_and_scale_ups(org, team, department):
    budgets.set_budget(actor=actor_for(org["admin"]), department=department, amount="0", hard_limit=True)
    with pytest.raises(Conflict, match="the department"):
        budgets.check_can_spend(team)
    Budget.objects.filter(department=department).update(amount="5")
    budgets.check_can_spend(team)  # nothing spent yet: below the limit
