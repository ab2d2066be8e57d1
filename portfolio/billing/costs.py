"""What one thing costs, for the pages of the things billing prices: an endpoint's cost per 1,000
requests and per million tokens (or hour of audio, for speech models) this month, a deployment's
replica-hours and cost this month, a job's compute. Read from billing's own ledger and price book; the
apps above pass plain names and ids."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.db.models import Q, Sum
from django.utils import timezone

from portfolio.billing import money
from portfolio.billing.charges import compute_cost, interval_cost
from portfolio.billing.choices import ComputeKind, PriceKind
from portfolio.billing.models import ComputeInterval, TokenUsage
from portfolio.billing.pricing import PriceBook

MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class ComputeCost:
    """Compute held over a span: hours each interval ran (summed), and their cost."""

    hours: Decimal
    cost: Decimal
    intervals: int


def _compute(intervals, start: datetime | None, end: datetime, as_of: datetime) -> ComputeCost:
    book = PriceBook.load(kinds=[PriceKind.POOL], until=end)
    hours, cost, count = Fraction(0), Fraction(0), 0
    for interval in intervals:
        begin = max(interval.started_at, start) if start else interval.started_at
        finish = min(interval.ended_at or as_of, end, as_of)
        if finish <= begin:
            continue
        count += 1
        held, charged = interval_cost(book, interval, begin, finish)
        hours += held
        cost += charged
    return ComputeCost(money.to_decimal(hours, Decimal("0.01")), money.cents(cost), count)


def deployment_this_month(
    name: str, *, team_id: int, created_at: datetime, as_of: datetime | None = None
) -> ComputeCost:
    """Replica-hours of a deployment this month, and their cost. Names are unique among the deployments
    that exist: the intervals are this team's under the name since this deployment was created, not those
    of an earlier one of the name, this team's or another's, deleted since."""
    as_of = as_of or timezone.now()
    start, end = money.month_bounds(money.month_start(as_of))
    intervals = ComputeInterval.objects.filter(
        kind=ComputeKind.REPLICA,
        subject=name,
        team_id=team_id,
        started_at__gte=created_at,
        started_at__lt=end,
    ).filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
    return _compute(intervals, start, end, as_of)


JOB_KINDS = ("finetune", "distillation")  # the training meter's key kinds of a FineTuneJob row


def job_compute(job_id: int, as_of: datetime | None = None, *, kinds=JOB_KINDS) -> ComputeCost:
    """Every attempt of a job (intervals keyed ``job:<kind>:<id>:...``) over its whole life."""
    as_of = as_of or timezone.now()
    keys = Q(pk__in=[])
    for kind in kinds:
        keys |= Q(key__startswith=f"job:{kind}:{job_id}:")
    intervals = ComputeInterval.objects.filter(keys, kind=ComputeKind.JOB)
    return _compute(intervals, None, as_of, as_of)


@dataclass(frozen=True)
class EndpointCost:
    """An endpoint's calls this month and what they cost: at its token prices, or (unpriced) its
    deployments' compute shared out by requests."""

    requests: int
    tokens: int
    cost: Decimal
    priced: bool
    # Speech calls have no tokens: their usage is the audio's length, as they are billed.
    audio_seconds: Decimal = Decimal(0)

    @property
    def per_thousand_requests(self) -> Decimal | None:
        return money.cents(Fraction(self.cost) * 1000 / self.requests) if self.requests else None

    @property
    def per_million_tokens(self) -> Decimal | None:
        return money.cents(Fraction(self.cost) * money.MILLION / self.tokens) if self.tokens else None

    @property
    def per_audio_hour(self) -> Decimal | None:
        """What an hour of audio cost (a second's price rounds to nothing in cents)."""
        seconds = Fraction(self.audio_seconds)
        return money.cents(Fraction(self.cost) * 3600 / seconds) if seconds else None


def endpoint_this_month(endpoint_id: int, as_of: datetime | None = None) -> EndpointCost:
    as_of = as_of or timezone.now()
    start, end = money.month_bounds(money.month_start(as_of))
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT, PriceKind.POOL], until=end)
    usage = TokenUsage.objects.filter(endpoint_id=endpoint_id, hour__gte=start, hour__lt=end)
    hours = list(
        usage.values_list("hour", "deployment").annotate(
            calls=Sum("requests"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            audio_ms=Sum("audio_ms"),
        )
    )
    requests = sum(row[2] or 0 for row in hours)
    tokens = sum((row[3] or 0) + (row[4] or 0) for row in hours)
    audio_total_ms = sum(row[5] or 0 for row in hours)
    cost = Fraction(0)
    priced = any(book.at(PriceKind.ENDPOINT, endpoint_id, hour) for hour, *_ in hours) or bool(
        book.at(PriceKind.ENDPOINT, endpoint_id, as_of)
    )
    if priced:
        for hour, _deployment, _calls, tokens_in, tokens_out, audio_ms in hours:
            price = book.at(PriceKind.ENDPOINT, endpoint_id, hour)
            if price is not None:
                cost += Fraction(tokens_in or 0, money.MILLION) * Fraction(price.input_per_million)
                cost += Fraction(tokens_out or 0, money.MILLION) * Fraction(price.output_per_million)
                cost += Fraction(audio_ms or 0, 1000) * Fraction(price.audio_second)
    else:
        # Unpriced: each deployment's replica cost, this endpoint's share by requests it sent there. The
        # deployments are the endpoint's team's (a name a deletion freed may be another team's since).
        owner = usage.values_list("owner_team_id", flat=True).first()
        mine: dict[str, int] = {}
        for _hour, deployment, calls, *_ in hours:
            if deployment:
                mine[deployment] = mine.get(deployment, 0) + (calls or 0)
        served = dict(
            TokenUsage.objects.filter(
                hour__gte=start, hour__lt=end, deployment__in=list(mine), owner_team_id=owner
            )
            .values_list("deployment")
            .annotate(calls=Sum("requests"))
        )
        owned = [(name, owner) for name in mine] if owner is not None else []
        costs = compute_cost(book, owned, start, end, as_of)
        for deployment, owner_id in owned:
            if served.get(deployment):
                calls = mine[deployment]
                cost += costs.get((deployment, owner_id), Fraction(0)) * Fraction(calls, served[deployment])
    return EndpointCost(requests, tokens, money.cents(cost), priced, money.seconds(audio_total_ms))
