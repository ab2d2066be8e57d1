"""The cost figures of the serving pages (from billing's ledger and price book): an endpoint's cost per
1,000 requests and per million tokens this month, a deployment's replica-hours and cost this month."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.billing import costs, meters, money
from portfolio.billing import services as billing_services
from portfolio.billing.choices import ComputeKind, PriceKind
from portfolio.billing.meters import TokenHour
from portfolio.billing.subjects import Subject

pytestmark = pytest.mark.django_db


def _an_hour_this_month():
    now = timezone.now()
    start = money.month_bounds(money.month_start(now))[0]
    return max(start, now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1))


def _calls(
    endpoint, team, *, requests: int, tokens_in: int, tokens_out: int, audio_ms: int = 0, caller=None
) -> None:
    hour = _an_hour_this_month()
    caller = caller or team
    meters.replace_token_hours(
        hour,
        hour + timedelta(hours=1),
        [TokenHour(hour, endpoint.pk, endpoint.name, team.pk, team.department_id, "support-bot", caller.pk,
                   caller.department_id, requests, tokens_in, tokens_out, audio_ms)],
    )  # fmt: skip


def test_a_priced_endpoint_shows_its_cost_per_thousand_requests_and_per_million_tokens(
    signed_in, org, admin, team, endpoint
):
    start = money.month_bounds(money.month_start(timezone.now()))[0]
    billing_services.set_price(
        actor=admin, subject=Subject(PriceKind.ENDPOINT, str(endpoint.pk), endpoint.name), effective_from=start,
        input_per_million="2", output_per_million="4",
    )  # fmt: skip
    _calls(endpoint, team, requests=1000, tokens_in=1_000_000, tokens_out=500_000)
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    # 2.00 for the input, 2.00 for the output: 4.00 a thousand requests, 4.00 / 1.5 per million tokens.
    assert "Per 1,000 requests" in page and "4.00 EUR" in page and "2.67 EUR" in page


def test_a_speech_endpoint_shows_its_seconds_of_audio_and_cost_per_hour_of_audio_not_zero_tokens(
    signed_in, org, admin, team, endpoint
):
    start = money.month_bounds(money.month_start(timezone.now()))[0]
    billing_services.set_price(
        actor=admin, subject=Subject(PriceKind.ENDPOINT, str(endpoint.pk), endpoint.name), effective_from=start,
        audio_second="0.01",
    )  # fmt: skip
    _calls(endpoint, team, requests=3, tokens_in=0, tokens_out=0, audio_ms=90_000)
    cost = costs.endpoint_this_month(endpoint.pk)
    assert (cost.audio_seconds, cost.cost, cost.per_audio_hour) == (
        Decimal(90),
        Decimal("0.90"),
        Decimal("36.00"),
    )
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    # 90 s at 0.01: 0.90, which is 36.00 an hour of audio; no "0 tokens", no "per million tokens —".
    assert "90.0 s of audio" in page and "Per hour of audio" in page and "36.00 EUR" in page
    assert "Per million tokens" not in page and "0 tokens" not in page


def test_an_unpriced_endpoint_shares_its_deployments_compute_by_requests(
    signed_in, org, admin, team, endpoint, pool
):
    start = money.month_bounds(money.month_start(timezone.now()))[0]
    billing_services.set_price(
        actor=admin,
        subject=Subject(PriceKind.POOL, str(pool.pk), pool.name),
        effective_from=start,
        cpu_core_hour="1",
    )
    began = _an_hour_this_month()
    meters.record_interval(
        key="replica:1", kind=ComputeKind.REPLICA, team_id=team.pk, department_id=team.department_id,
        subject="support-bot", pool_id=pool.pk, pool=pool.name, gpus=0, cpu_cores=3, memory_bytes=0,
        started_at=began, ended_at=began + timedelta(hours=1),
    )  # fmt: skip
    _calls(endpoint, team, requests=10, tokens_in=100, tokens_out=100)
    page = signed_in(org["owner"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    # 3 core-hours at 1.00: 3.00 over 10 requests, 300.00 per 1,000.
    assert "no token price" in page and "300.00 EUR" in page


def test_an_endpoint_with_no_calls_says_so(signed_in, org, endpoint):
    page = signed_in(org["owner"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "No calls this month yet." in page


def test_the_deployment_page_shows_its_replica_hours_and_cost_this_month(
    signed_in, org, admin, team, deployment, pool
):
    start = money.month_bounds(money.month_start(timezone.now()))[0]
    billing_services.set_price(
        actor=admin, subject=Subject(PriceKind.POOL, str(pool.pk), pool.name), effective_from=start,
        cpu_core_hour="0.5",
    )  # fmt: skip
    began = _an_hour_this_month()
    type(deployment).objects.filter(pk=deployment.pk).update(created_at=began - timedelta(minutes=1))
    meters.record_interval(
        key="replica:9", kind=ComputeKind.REPLICA, team_id=team.pk, department_id=team.department_id,
        subject=deployment.name, pool_id=pool.pk, pool=pool.name, gpus=0, cpu_cores=2, memory_bytes=0,
        started_at=began, ended_at=began + timedelta(hours=1),
    )  # fmt: skip
    page = signed_in(org["viewer"]).get(reverse("deployment-detail", args=[deployment.name])).content.decode()
    assert "1.00 replica-hours" in page and f"{Decimal('1.00')} EUR" in page
