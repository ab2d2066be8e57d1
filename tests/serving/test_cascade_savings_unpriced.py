"""A cascade's savings when a hop has no price: billing charges that hop at cost (a share of compute known at
the month's end), so its usage rows' 0 is no cost, and the savings say "not priced" rather than a number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from serving import services
from serving.cascade_savings import cascade_savings
from serving.gateway.models import UsageEvent
from serving.models import Endpoint

pytestmark = pytest.mark.django_db

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
BIG = (90_000, 10_000)  # 100,000 tokens: 1.00 at 10 a million


@pytest.fixture
def cascade(owner, team, deployment):
    for name in ("support", "large", "checker"):
        services.create_endpoint(actor=owner, name=name, team=team, routes=[{"deployment": "support-bot"}])
    return services.create_endpoint(
        actor=owner,
        name="smart",
        team=team,
        routes=[],
        kind="cascade",
        config={"small": "support", "large": "large", "threshold": -0.5},
    )


def _price(name: str, rate: str, since: datetime = LONG_AGO) -> None:
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(Endpoint.objects.get(name=name).pk),
        subject_name=name,
        effective_from=since,
        input_per_million=Decimal(rate),
        output_per_million=Decimal(rate),
    )


def _hop(request: str, hop: int, endpoint: str, cost: str, at: datetime | None = None) -> None:
    UsageEvent.objects.create(event_id=f"{request}-{hop}", at=at or timezone.now(), endpoint=endpoint, via="smart",
                              kind="chat", input_tokens=BIG[0], output_tokens=BIG[1], status=200,
                              cost=Decimal(cost))  # fmt: skip


def _four_requests_one_escalated(small_cost: str, large_cost: str, at: datetime | None = None) -> None:
    for request in "abcd":
        _hop(request, 1, "support", small_cost, at)
    _hop("d", 2, "large", large_cost, at)


def _savings(since: datetime | None = None):
    return cascade_savings(Endpoint.objects.get(name="smart"), since or timezone.now() - timedelta(hours=1))


def test_both_hops_priced_the_savings_are_a_number(cascade):
    _price("support", "1")
    _price("large", "10")
    _four_requests_one_escalated("0.1", "1")
    savings = _savings()
    # Always large: 1 paid + 3 kept answers at 1.00 = 4; the cascade paid 4 x 0.1 + 1 = 1.4.
    assert (savings.cost, savings.always_large, savings.saved) == (Decimal("1.4"), Decimal(4), Decimal("2.6"))


def test_an_unpriced_large_endpoint_leaves_the_savings_not_priced_not_negative(cascade):
    _price("support", "1")
    _four_requests_one_escalated("0.1", "0")
    savings = _savings()
    assert (savings.requests, savings.escalated) == (4, 1)
    assert (savings.cost, savings.always_large, savings.saved) == (None, None, None)


def test_an_unpriced_small_endpoint_leaves_what_the_cascade_cost_not_priced(cascade):
    _price("support", "0")  # a version with no rate: billed at cost, as one with none
    _price("large", "10")
    _four_requests_one_escalated("0", "1")
    savings = _savings()
    assert savings.cost is None and savings.saved is None
    assert savings.always_large == Decimal(4)  # the large endpoint's own figure is still known


def test_an_unpriced_verifier_leaves_what_the_cascade_cost_not_priced(cascade):
    Endpoint.objects.filter(name="smart").update(
        config={"small": "support", "large": "large", "confidence": "verifier", "verifier": "checker"}
    )
    _price("support", "1")
    _price("large", "10")
    _hop("a", 1, "support", "0.1")
    _hop("a", 2, "checker", "0")
    assert _savings().cost is None


def test_large_calls_made_before_its_price_began_are_not_priced_though_it_has_one_now(cascade):
    _price("support", "1")
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    _price("large", "10", this_hour)
    _four_requests_one_escalated("0.1", "0", this_hour - timedelta(minutes=30))
    savings = _savings(this_hour - timedelta(hours=1))
    assert savings.always_large is None and savings.saved is None


def test_the_cascades_page_says_not_priced(signed_in, org, cascade):
    _price("support", "1")
    _four_requests_one_escalated("0.1", "0")
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=["smart"])).content.decode()
    assert 'data-testid="escalation-rate">25%' in page
    assert 'data-testid="cost-saved">not priced' in page and "(not priced)" in page
