"""What a cascade endpoint saved, from its usage rows: how often it escalated, what its calls cost, and what
always calling the large endpoint would have cost instead.

A cascade's request leaves a usage row per hop (``via`` the cascade): the small endpoint's (event id
``<request>-1``), its verifier's when it has one (``<request>-2``), and, when it escalated, the large
one's (the last). Always calling the large one would have cost what the escalated requests paid it, plus,
for each request whose small answer was kept, that request's tokens at the large endpoint's price in force
now (the same prompt, an answer about as long). A verifier is its own endpoint (the service refuses small
or large as one), so its rows are told from the escalations by name.

A hop called in an hour its endpoint had no price (none, or one with no rate) is billed at cost, a share
of its deployment's compute known at the month's end: its usage rows' 0 is no cost of the calls, so the
cascade's cost is then not priced (None), and so is always calling the large endpoint when its own calls
were unpriced or it has no price now to price the kept answers; so is what was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Count, Exists, F, OuterRef, Sum
from django.db.models.functions import Coalesce, Left, Length, TruncHour

from serving.gateway import hop_ids
from serving.models import Endpoint

ZERO = Decimal(0)


@dataclass(frozen=True)
class CascadeSavings:
    requests: int
    escalated: int
    cost: Decimal | None  # what the cascade's calls cost (every hop); None: a hop was not priced
    always_large: Decimal | None  # what calling the large endpoint for every request would have cost

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.requests if self.requests else None

    @property
    def saved(self) -> Decimal | None:
        if self.always_large is None or self.cost is None:
            return None
        return self.always_large - self.cost


def _request_ids(rows):
    """Each row's request id: its event id less the hop's one-digit suffix (a cascade has at most 3 hops)."""
    return rows.annotate(request=Left("event_id", Length("event_id") - len(hop_ids.suffix(1))))


def _unpriced_hops(rows, ids: dict[str, int], book) -> set[str]:
    """The hops (endpoint names) with a usage row in an hour their endpoint had no price: prices start on
    the hour (UTC), and the version in force at an hour's start prices its calls, as billing's."""
    from portfolio.billing.choices import PriceKind
    from portfolio.billing.pricing import priced

    hours = rows.order_by().annotate(hour=TruncHour("at", tzinfo=UTC)).values_list("endpoint", "hour")
    return {
        name
        for name, hour in hours.distinct()
        if name not in ids or not priced(book.at(PriceKind.ENDPOINT, ids[name], hour))
    }


def cascade_savings(endpoint: Endpoint, since: datetime) -> CascadeSavings:
    """Five aggregate queries (six with a verifier) over the usage rows since ``since`` (they use the
    endpoint-and-time index), and the endpoints' prices."""
    from django.utils import timezone

    from portfolio.billing.choices import PriceKind
    from portfolio.billing.pricing import PriceBook, priced
    from serving.gateway.models import UsageEvent

    config = endpoint.config or {}
    small_name, large_name = config.get("small", ""), config.get("large", "")
    rows = UsageEvent.objects.filter(via=endpoint.name, at__gte=since)
    small = rows.filter(endpoint=small_name)
    large = rows.filter(endpoint=large_name)
    money = Coalesce(Sum("cost"), ZERO)
    small_totals = small.aggregate(requests=Count("event_id"), cost=money)
    large_totals = large.aggregate(escalated=Count("event_id"), cost=money)
    verifier_name = config.get("verifier", "")
    # A verifier's questions are part of what the cascade cost.
    verifier_cost = (
        rows.filter(endpoint=verifier_name).aggregate(cost=money)["cost"] if verifier_name else ZERO
    )
    # NOT EXISTS, not NOT IN: PostgreSQL runs it as a hash anti join; a NOT IN over this expression (no index
    # serves it) ran as a subplan per small row that did not fit work_mem, quadratic at a month's traffic.
    escalated = _request_ids(large).filter(request=OuterRef("request"))
    kept = (
        _request_ids(small)
        .filter(~Exists(escalated))
        .aggregate(
            tokens_in=Coalesce(Sum(F("input_tokens")), 0), tokens_out=Coalesce(Sum(F("output_tokens")), 0)
        )
    )
    hops = [name for name in (small_name, large_name, verifier_name) if name]
    ids = dict(Endpoint.objects.filter(name__in=hops).values_list("name", "pk"))
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT])
    unpriced = _unpriced_hops(rows.filter(endpoint__in=hops), ids, book)
    cost = None if unpriced else small_totals["cost"] + large_totals["cost"] + verifier_cost
    always_large = None
    large_now = book.at(PriceKind.ENDPOINT, ids[large_name], timezone.now()) if large_name in ids else None
    kept_tokens = kept["tokens_in"] or kept["tokens_out"]
    if large_name not in unpriced and (priced(large_now) or not kept_tokens):
        price_in = large_now.input_per_million if large_now is not None else ZERO
        price_out = large_now.output_per_million if large_now is not None else ZERO
        kept_at_large = (
            Decimal(kept["tokens_in"]) * Decimal(price_in) + Decimal(kept["tokens_out"]) * Decimal(price_out)
        ) / Decimal(1_000_000)
        always_large = large_totals["cost"] + kept_at_large
    return CascadeSavings(
        requests=small_totals["requests"],
        escalated=large_totals["escalated"],
        cost=cost,
        always_large=always_large,
    )
