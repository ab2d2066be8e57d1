"""Stepping rollouts (the beat task ``serving.step_rollouts``): each active rollout's figures since its
canary started, from the gateway's usage events of the endpoint per route target, and the decision of
``rollout_decisions.decide`` acted on (serving/services/rollouts.py changes the weights, audited).

What counts: the requests the endpoint itself answered (a fallback's are its own), split into the
candidate (its deployment and adapter) and everything else (the baseline); an error is a 5xx (the engine
failing, timing out, or not reachable), not a client's 4xx.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from serving.choices import RolloutState
from serving.models import Endpoint, Rollout
from serving.rollout_decisions import HOLD, PROMOTE, Policy, Stats, decide
from serving.services import rollouts as services

logger = logging.getLogger(__name__)

FIGURES_SQL = """
SELECT (deployment = %s AND adapter = %s) AS canary, count(*), count(*) FILTER (WHERE status >= 500),
    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms), 0)
FROM {table}
WHERE endpoint = %s AND at >= %s AND at < %s AND deployment <> ''
GROUP BY 1
"""


def measure(rollout: Rollout, now: datetime) -> tuple[Stats, Stats]:
    """(baseline, canary) since the rollout started."""
    from serving.gateway.models import UsageEvent

    found = {True: Stats(), False: Stats()}
    with connection.cursor() as cursor:
        cursor.execute(
            FIGURES_SQL.format(table=UsageEvent._meta.db_table),
            [rollout.deployment, rollout.adapter, rollout.endpoint.name, rollout.started_at, now],
        )
        for canary, requests, errors, p95 in cursor.fetchall():
            found[bool(canary)] = Stats(requests=requests, errors=errors, p95_ms=float(p95))
    return found[False], found[True]


def policy_of(rollout: Rollout) -> Policy:
    return Policy(
        ends_at=rollout.ends_at,
        min_requests=rollout.min_requests,
        max_error_rate_increase=rollout.max_error_rate_increase,
        max_latency_ratio=rollout.max_latency_ratio,
    )


def _canary_gone(rollout: Rollout) -> bool:
    """A route edit took the canary's route out, or its weight to 0, while it was watched."""
    routes = rollout.endpoint.routes.filter(deployment__name=rollout.deployment, weight__gt=0)
    routes = routes.filter(adapter__name=rollout.adapter) if rollout.adapter else routes.filter(adapter=None)
    return not routes.exists()


def step(rollout_id: int, now: datetime | None = None) -> str | None:
    """One check of one rollout: ``promote``, ``hold``, ``rollback``, ``abort``; None when it is not under
    way any more or is being changed right now (the next tick looks again)."""
    now = now or timezone.now()
    actor = Actor.for_system("rollouts")
    with transaction.atomic():
        endpoint_id = Rollout.objects.filter(pk=rollout_id).values_list("endpoint_id", flat=True).first()
        if endpoint_id is None:
            return None
        # Locked as the services lock: the endpoint, then its rollout.
        endpoint = Endpoint.objects.select_for_update(skip_locked=True).filter(pk=endpoint_id).first()
        if endpoint is None:
            return None
        rollout = Rollout.objects.select_for_update().filter(pk=rollout_id, state=RolloutState.CANARY).first()
        if rollout is None:
            return None
        rollout.endpoint = endpoint
        if _canary_gone(rollout):
            services.finish(
                rollout,
                RolloutState.ABORTED,
                "Aborted: a route edit took the canary's traffic away while it was watched.",
                actor,
                full=False,
            )
            return "abort"
        baseline, canary = measure(rollout, now)
        verdict, reason = decide(baseline, canary, policy_of(rollout), now)
        rollout.figures = {
            "baseline": baseline.as_dict(),
            "canary": canary.as_dict(),
            "decision": verdict,
            "reason": reason,
        }
        rollout.checked_at = now
        if verdict == HOLD:
            rollout.save(update_fields=["figures", "checked_at"])
        elif verdict == PROMOTE:
            services.promote(actor=actor, rollout=rollout, reason=reason)
        else:
            services.roll_back(actor=actor, rollout=rollout, reason=reason)
        return verdict


def step_all(now: datetime | None = None) -> dict[str, int]:
    """Every active rollout once; what was decided, counted."""
    counts: dict[str, int] = {}
    for rollout_id in Rollout.objects.filter(state=RolloutState.CANARY).values_list("pk", flat=True):
        try:
            verdict = step(rollout_id, now)
        except Exception:
            logger.exception("rollouts: stepping rollout %s failed", rollout_id)
            verdict = "failed"
        if verdict is not None:
            counts[verdict] = counts.get(verdict, 0) + 1
    return counts
