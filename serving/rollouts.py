"""Stepping rollouts (the beat task ``serving.step_rollouts``): each active rollout's figures since its
canary started, from the gateway's usage events of the endpoint per route target, and the decision of
``rollout_decisions.decide`` acted on (serving/services/rollouts.py changes the weights, audited).

What counts: the requests the endpoint itself answered (a fallback's are its own), split into the
candidate (its deployment and adapter) and everything else (the baseline); an error is a 5xx (the engine
failing, timing out, or not reachable), or the engine's own 404 (relayed as ``upstream_error``: it does
not serve the model, an adapter its replica never loaded), not a client's 4xx. A judged rollout's sampled scores
(rollout_judge.py) are taken before the rows are locked, added to its tally, audited, and decide too; a
check that finds the endpoint's row locked keeps them for the next (their calls were billed).
The judge is called with a short-lived key of the endpoint's team, revoked after; one left active by a
worker killed mid-judging is revoked at the rollout's next check, or once it has ended.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.leases import Lease
from serving import adapter_holding, rollout_judge
from serving.choices import RolloutState
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from serving.models import Endpoint, Replica, Rollout
from serving.rollout_decisions import HOLD, PROMOTE, Judged, Policy, Stats, breach, decide
from serving.services import rollouts as services

logger = logging.getLogger(__name__)

FIGURES_SQL = """
SELECT (deployment = %s AND adapter = %s) AS canary, count(*),
    count(*) FILTER (WHERE status >= 500 OR (status = 404 AND error = 'upstream_error')),
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
        min_judge_score=rollout.min_judge_score if rollout.judge_endpoint_name else None,
        min_judge_samples=rollout.min_judge_samples,
    )


def _canary_gone(rollout: Rollout) -> bool:
    """A route edit took the canary's route out, or its weight to 0, while it was watched."""
    routes = rollout.endpoint.routes.filter(deployment__name=rollout.deployment, weight__gt=0)
    routes = routes.filter(adapter__name=rollout.adapter) if rollout.adapter else routes.filter(adapter=None)
    return not routes.exists()


def _canary_ready(rollout: Rollout) -> bool:
    """Whether the canary's deployment has a ready replica (for an adapter, one that loaded it): the gateway
    routes to no other (routing.choose_route), so a canary without one takes no calls and logs no errors.
    A replica without the adapter (a load that failed, files still copying, an older generation) answers
    every call to it with a 404."""
    replicas = Replica.serving("deployment__replica_set__")
    if rollout.adapter:
        version = adapter_holding.attached_version(rollout.deployment, rollout.adapter)
        replicas &= adapter_holding.holding(rollout.adapter, version, "deployment__replica_set__")
    # One filter() call: both conditions hold of the same replica.
    routes = rollout.endpoint.routes.filter(replicas, deployment__name=rollout.deployment)
    routes = routes.filter(adapter__name=rollout.adapter) if rollout.adapter else routes.filter(adapter=None)
    return routes.exists()


def judge_key_name(rollout_id: int) -> str:
    """The name of the service key a check of the rollout calls its judge with (training's sampler)."""
    return f"rollout #{rollout_id} (judge)"


def revoke_ended_judge_keys(now: datetime) -> int:
    """The judge keys still active of rollouts ended within a key's lifetime (by a check or by hand): a
    worker killed mid-judging could not revoke its own, and no check of its rollout comes again."""
    ended = (
        Rollout.objects.exclude(state=RolloutState.CANARY)
        .exclude(judge_endpoint_name="")
        .filter(finished_at__gte=now - key_services.SERVICE_KEY_LIFETIME)
    )
    names = [judge_key_name(pk) for pk in ended.values_list("pk", flat=True)]
    left = ApiKey.objects.filter(service=True, revoked_at__isnull=True, name__in=names)
    return sum(
        key_services.revoke_service_keys(actor=Actor.for_system("rollouts"), team_id=team_id, names=[name])
        for team_id, name in set(left.values_list("team_id", "name"))
    )


def _sample_judge(rollout_id: int, now: datetime) -> rollout_judge.Sampled:
    """The judge's scores of the canary answers due now, taken with no lock held (it calls endpoints)."""
    rollout = (
        Rollout.objects.filter(pk=rollout_id, state=RolloutState.CANARY)
        .exclude(judge_endpoint_name="")
        .select_related("endpoint", "judge_endpoint")
        .first()
    )
    if rollout is None:
        return rollout_judge.Sampled([])
    # An earlier check's, its worker killed mid-judging (checks of a rollout never overlap: step's lease).
    key_services.revoke_service_keys(
        actor=Actor.for_system("rollouts"),
        team_id=rollout.endpoint.owner_team_id,
        names=[judge_key_name(rollout.pk)],
    )
    baseline, canary = measure(rollout, now)
    policy = policy_of(rollout)
    if (canary.requests >= policy.min_requests or now >= policy.ends_at) and breach(baseline, canary, policy):
        # Rolled back on its traffic by this check: sampling first (minutes of canary and judge calls) kept
        # the failing canary its share of the calls all that time, and billed the judge for nothing.
        return rollout_judge.Sampled([])
    return rollout_judge.judge(rollout, canary.requests)


def _counted(judged: dict, sampled: rollout_judge.Sampled) -> dict:
    """``judged``'s counters once the check's questions are counted: ``asked`` (scores kept), ``redrawn``
    (checks a refusal cut short), which seed the next draw (rollout_judge.seed)."""
    redrawn = int(judged.get("redrawn", 0)) + sampled.redraw
    return {
        "asked": int(judged.get("asked", 0)) + len(sampled.scores),
        **({"redrawn": redrawn} if redrawn else {}),
    }


def _keep_for_next_check(rollout_id: int, sampled: rollout_judge.Sampled) -> None:
    """The scores of a check that found the endpoint's row locked (a route edit), kept as ``pending`` for the
    next check to add to the tally, and the questions counted: not asked (and billed) again. No row lock is
    waited for but the rollout's own, which no holder of it waits on this check to release."""
    if not sampled.scores and not sampled.redraw:
        return
    judged = Rollout.objects.filter(pk=rollout_id, state=RolloutState.CANARY).values_list("judged", flat=True)
    found = judged.first()
    if found is None:
        return
    kept = {**found, **_counted(found, sampled), "pending": [*found.get("pending", []), *sampled.scores]}
    # Compare-and-swap: checks of a rollout never overlap (step's lease), and nothing else writes judged.
    Rollout.objects.filter(pk=rollout_id, state=RolloutState.CANARY, judged=found).update(judged=kept)


def _record_judged(rollout: Rollout, sampled: rollout_judge.Sampled, actor: Actor) -> Judged:
    """Add this check's scores (and those a check that found the endpoint locked kept) to the rollout's
    tally, as a step of its timeline, audited."""
    judged = Judged.of(rollout.judged)
    if sampled.trouble:
        rollout.figures["judge_trouble"] = sampled.trouble
    scores = [*rollout.judged.get("pending", []), *sampled.scores]
    if not scores:
        if sampled.redraw:  # nothing to tally, but the next check draws other questions
            rollout.judged = {**rollout.judged, **_counted(rollout.judged, sampled)}
            rollout.save(update_fields=["judged"])
        return judged
    before = rollout.snapshot() | {"judged": rollout.judged}
    judged = judged.plus(scores)
    rollout.judged = {**judged.as_dict(), **_counted(rollout.judged, sampled)}
    mean = judged.score
    services.add_step(
        rollout,
        "judge",
        f"{rollout.judge_endpoint_name} judged {len(scores)} sampled canary answers"
        + (f"; {len(scores) - sum(s is not None for s in scores)} unreadable" if None in scores else "")
        + (
            f"; mean {mean:.2f} over {judged.samples} so far." if mean is not None else "; none readable yet."
        ),
        actor,
    )
    rollout.save(update_fields=["judged", "steps"])
    audit.record(
        actor, "rollout.judge", rollout, before=before, after=rollout.snapshot() | {"judged": rollout.judged}
    )
    return judged


def step(rollout_id: int, now: datetime | None = None) -> str | None:
    """One check of one rollout: ``promote``, ``hold``, ``rollback``, ``abort``; None when it is not under
    way any more, is being changed right now, or another check of it is under way (two at once would each
    judge the answers due, twice as many): the next tick looks again."""
    lease = Lease(f"rollouts.step:{rollout_id}")
    if not lease.acquire(wait=False):
        return None
    with lease.kept():
        return _step(rollout_id, now)


def _step(rollout_id: int, now: datetime | None) -> str | None:
    actor = Actor.for_system("rollouts")
    sampled = _sample_judge(rollout_id, now or timezone.now())
    # The check's time is after the sampling (up to rollout_judge.SAMPLING_SECONDS): the calls made while the
    # judge was asked count now, not at the next check, and a window that ended meanwhile ends now.
    now = now or timezone.now()
    with transaction.atomic():
        endpoint_id = Rollout.objects.filter(pk=rollout_id).values_list("endpoint_id", flat=True).first()
        if endpoint_id is None:
            return None
        # Locked as the services lock: the endpoint, then its rollout.
        endpoint = Endpoint.objects.select_for_update(skip_locked=True).filter(pk=endpoint_id).first()
        if endpoint is None:
            _keep_for_next_check(rollout_id, sampled)
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
        rollout.figures = {}
        judged = _record_judged(rollout, sampled, actor)
        verdict, reason = decide(baseline, canary, policy_of(rollout), now, judged, _canary_ready(rollout))
        rollout.figures |= {
            "baseline": baseline.as_dict(),
            "canary": canary.as_dict(),
            "decision": verdict,
            "reason": reason,
        }
        if rollout.judge_endpoint_name:
            rollout.figures["judge"] = judged.as_dict()
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
    try:
        revoke_ended_judge_keys(now or timezone.now())
    except Exception:  # never holds up the checks
        logger.exception("rollouts: revoking the judge keys of ended rollouts failed")
    for rollout_id in Rollout.objects.filter(state=RolloutState.CANARY).values_list("pk", flat=True):
        try:
            verdict = step(rollout_id, now)
        except Exception:
            logger.exception("rollouts: stepping rollout %s failed", rollout_id)
            verdict = "failed"
        if verdict is not None:
            counts[verdict] = counts.get(verdict, 0) + 1
    return counts
