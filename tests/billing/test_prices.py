"""The price book: versions added by admins only, audited, never inside a closed month."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit.models import AuditEvent
from portfolio.billing import services, statements
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.billing.pricing import PriceBook, current_token_rates
from portfolio.billing.subjects import Subject
from portfolio.errors import Forbidden, Invalid
from tests.conftest import actor_for

ROUTER = Subject(PriceKind.ENDPOINT, "11", "router")
POOL = Subject(PriceKind.POOL, "5", "gpu-a")


def test_a_price_version_is_in_force_from_the_next_hour_and_audited_with_before_and_after(org):
    admin = actor_for(org["admin"])
    first = services.set_price(
        actor=admin, subject=ROUTER, effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_per_million="0.40", output_per_million="1.20",
    )  # fmt: skip
    second = services.set_price(actor=admin, subject=ROUTER, output_per_million="1.50", note="new hardware")
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    assert second.effective_from == this_hour + timedelta(hours=1)
    assert (second.input_per_million, second.output_per_million) == (Decimal("0.40"), Decimal("1.50"))
    event = AuditEvent.objects.filter(action="price.set").order_by("-sequence").first()
    assert (
        event.before["output_per_million"] == "1.200000" and event.after["output_per_million"] == "1.500000"
    )
    assert event.actor_label == "admin"
    assert current_token_rates() == {11: (Decimal("0.40"), Decimal("1.20"))}  # this hour's calls keep it
    assert current_token_rates(this_hour + timedelta(hours=1)) == {11: (Decimal("0.40"), Decimal("1.50"))}
    book = PriceBook.load()
    assert book.at(PriceKind.ENDPOINT, 11, datetime(2026, 2, 1, tzinfo=UTC)) == first


@pytest.mark.parametrize("role", ["owner", "auditor", "engineer", "outsider"])
def test_only_admins_set_prices(org, role):
    with pytest.raises(Forbidden):
        services.set_price(actor=actor_for(org[role]), subject=ROUTER, input_per_million="1")
    assert not Price.objects.exists()


@pytest.mark.parametrize(
    "rates",
    [
        {"input_per_million": "-1"},
        {"input_per_million": "NaN"},
        {"input_per_million": "Infinity"},
        {"input_per_million": "abc"},
        {"input_per_million": "0.0000001"},
        {"input_per_million": "10000000000"},
        {"gpu_hour": "1"},  # a pool's rate on an endpoint
    ],
)
def test_a_bad_rate_is_refused_and_nothing_is_written(org, rates):
    with pytest.raises(Invalid):
        services.set_price(actor=actor_for(org["admin"]), subject=ROUTER, **rates)
    assert not Price.objects.exists() and not AuditEvent.objects.filter(action="price.set").exists()


def test_prices_change_on_the_hour_and_not_more_than_a_year_ahead(org):
    admin = actor_for(org["admin"])
    with pytest.raises(Invalid, match="on the hour"):
        services.set_price(actor=admin, subject=POOL, effective_from=datetime(2026, 3, 1, 10, 30, tzinfo=UTC))
    with pytest.raises(Invalid, match="ahead"):
        services.set_price(actor=admin, subject=POOL, effective_from=(timezone.now() + timedelta(days=400)).replace(
            minute=0, second=0, microsecond=0))  # fmt: skip


@pytest.mark.parametrize("moment", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"])
def test_a_time_beyond_the_calendar_in_utc_is_refused_not_an_internal_error(org, moment):
    with pytest.raises(Invalid, match="out of range"):
        services.set_price(
            actor=actor_for(org["admin"]),
            subject=POOL,
            effective_from=datetime.fromisoformat(moment),
            gpu_hour="1",
        )
    assert not Price.objects.exists()


def test_a_closed_month_keeps_its_prices(org, department):
    statements.close(Actor.for_system("billing"), department, date(2026, 10, 1))
    with pytest.raises(Invalid, match="closed"):
        services.set_price(
            actor=actor_for(org["admin"]), subject=POOL, effective_from=datetime(2026, 10, 20, tzinfo=UTC),
            gpu_hour="9",
        )  # fmt: skip
    services.set_price(
        actor=actor_for(org["admin"]),
        subject=POOL,
        effective_from=datetime(2026, 11, 1, tzinfo=UTC),
        gpu_hour="9",
    )
