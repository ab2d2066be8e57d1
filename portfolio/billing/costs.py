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
from portfolio.billing.pricing import PriceBook, priced

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
    """An endpoint's calls this month and what they cost: at its token prices in the hours it had one, and
    (the hours without) its share of its deployments' compute, as billing charges other teams' calls."""

    requests: int
    tokens: int
    # Exact: each figure below is derived from it and rounded once (a rounded cost times 1,000 / requests
    # multiplies the rounding).
    exact_cost: Fraction
    priced: bool  # some calls were at its token prices (no calls: it has a price now)
    at_cost: bool = False  # some calls were in hours it had no price: a share of compute
    # Speech calls have no tokens: their usage is the audio's length, as they are billed.
    audio_seconds: Decimal = Decimal(0)

    @property
    def cost(self) -> Decimal:
        return money.cents(self.exact_cost)

    @property
    def per_thousand_requests(self) -> Decimal | None:
        return money.cents(self.exact_cost * 1000 / self.requests) if self.requests else None

    @property
    def per_million_tokens(self) -> Decimal | None:
        return money.cents(self.exact_cost * money.MILLION / self.tokens) if self.tokens else None

    @property
    def per_audio_hour(self) -> Decimal | None:
        """What an hour of audio cost (a second's price rounds to nothing in cents)."""
        seconds = Fraction(self.audio_seconds)
        return money.cents(self.exact_cost * 3600 / seconds) if seconds else None


def endpoint_this_month(endpoint_id: int, as_of: datetime | None = None) -> EndpointCost:
    as_of = as_of or timezone.now()
    start, end = money.month_bounds(money.month_start(as_of))
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT, PriceKind.POOL], until=end)
    usage = TokenUsage.objects.filter(endpoint_id=endpoint_id, hour__gte=start, hour__lt=end)
    hours = list(
        usage.values_list("hour", "deployment", "owner_team_id").annotate(
            calls=Sum("requests"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            audio_ms=Sum("audio_ms"),
        )
    )
    requests = sum(row[3] or 0 for row in hours)
    tokens = sum((row[4] or 0) + (row[5] or 0) for row in hours)
    audio_total_ms = sum(row[6] or 0 for row in hours)
    cost = Fraction(0)
    # Calls in hours without a price (none, or one with no rate): [tokens, audio ms] per (deployment, owner).
    unpriced: dict[tuple[str, int], list[int]] = {}
    some_priced = some_at_cost = False
    for hour, deployment, owner, _calls, tokens_in, tokens_out, audio_ms in hours:
        price = book.at(PriceKind.ENDPOINT, endpoint_id, hour)
        if price is not None and priced(price):
            some_priced = True
            cost += Fraction(tokens_in or 0, money.MILLION) * Fraction(price.input_per_million)
            cost += Fraction(tokens_out or 0, money.MILLION) * Fraction(price.output_per_million)
            cost += Fraction(audio_ms or 0, 1000) * Fraction(price.audio_second)
        else:
            some_at_cost = True
            if deployment and owner is not None:
                used = unpriced.setdefault((deployment, owner), [0, 0])
                used[0] += (tokens_in or 0) + (tokens_out or 0)
                used[1] += audio_ms or 0
    cost += _at_cost(book, unpriced, start, end, as_of)
    if not hours:  # no calls yet: how the page says the next ones will be priced
        some_priced = priced(book.at(PriceKind.ENDPOINT, endpoint_id, as_of))
    return EndpointCost(requests, tokens, cost, some_priced, some_at_cost, money.seconds(audio_total_ms))


def _at_cost(book: PriceBook, unpriced: dict[tuple[str, int], list[int]], start, end, as_of) -> Fraction:
    """The compute share of the calls in unpriced hours, as charges.py's ``_at_cost`` charges other teams'
    calls: each deployment's replica cost this month (a deployment is its owning team's) times these
    calls' share of all the tokens it served this month, or of its audio when it served no tokens."""
    if not unpriced:
        return Fraction(0)
    costs = compute_cost(book, list(unpriced), start, end, as_of)
    served = {
        (deployment, owner): (int(tokens or 0), int(audio or 0))
        for deployment, owner, tokens, audio in TokenUsage.objects.filter(
            hour__gte=start, hour__lt=end, deployment__in={name for name, _ in unpriced}
        )
        .values_list("deployment", "owner_team_id")
        .annotate(tokens=Sum("input_tokens") + Sum("output_tokens"), audio=Sum("audio_ms"))
    }
    total = Fraction(0)
    for key, (used_tokens, used_audio_ms) in unpriced.items():
        all_tokens, all_audio_ms = served.get(key, (0, 0))
        if all_tokens:
            share = Fraction(used_tokens, all_tokens)
        elif all_audio_ms:
            share = Fraction(used_audio_ms, all_audio_ms)
        else:
            continue
        total += costs.get(key, Fraction(0)) * share
    return total
