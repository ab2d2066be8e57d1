"""What a cascade endpoint saved, from its usage rows: how often it escalated, what its calls cost, and what
always calling the large endpoint would have cost instead.

A cascade's request leaves a usage row per hop (``via`` the cascade): the small endpoint's (event id
``<request>-1``), its verifier's when it has one (``<request>-2``), and, when it escalated, the large
one's (the last). Always calling the large one would have cost what the escalated requests paid it, plus,
for each request whose small answer was kept, that request's tokens at the large endpoint's price in force
now (the same prompt, an answer about as long). A verifier is its own endpoint (the service refuses small
or large as one), so its rows are told from the escalations by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, Left, Length

from serving.gateway import hop_ids
from serving.models import Endpoint

ZERO = Decimal(0)


@dataclass(frozen=True)
class CascadeSavings:
    requests: int
    escalated: int
    cost: Decimal  # what the cascade's calls cost (both hops)
    always_large: Decimal  # what calling the large endpoint for every request would have cost

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.requests if self.requests else None

    @property
    def saved(self) -> Decimal:
        return self.always_large - self.cost


def _request_ids(rows):
    """Each row's request id: its event id less the hop's one-digit suffix (a cascade has at most 3 hops)."""
    return rows.annotate(request=Left("event_id", Length("event_id") - len(hop_ids.suffix(1))))


def cascade_savings(endpoint: Endpoint, since: datetime) -> CascadeSavings:
    """Four aggregate queries (five with a verifier) over the usage rows since ``since`` (they use the
    endpoint-and-time index)."""
    from portfolio.billing.pricing import current_token_rates
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
    kept = (
        _request_ids(small)
        .exclude(request__in=_request_ids(large).values("request"))
        .aggregate(
            tokens_in=Coalesce(Sum(F("input_tokens")), 0), tokens_out=Coalesce(Sum(F("output_tokens")), 0)
        )
    )
    large_row = Endpoint.objects.filter(name=large_name).values_list("pk", flat=True).first()
    price_in, price_out = current_token_rates().get(large_row, (ZERO, ZERO)) if large_row else (ZERO, ZERO)
    kept_at_large = (
        Decimal(kept["tokens_in"]) * Decimal(price_in) + Decimal(kept["tokens_out"]) * Decimal(price_out)
    ) / Decimal(1_000_000)
    cost = small_totals["cost"] + large_totals["cost"] + verifier_cost
    return CascadeSavings(
        requests=small_totals["requests"],
        escalated=large_totals["escalated"],
        cost=cost,
        always_large=large_totals["cost"] + kept_at_large,
    )
