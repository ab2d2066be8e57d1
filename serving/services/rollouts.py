"""Rollouts: a candidate route target of an endpoint gets a small canary weight, is watched for a window
(serving/rollouts.py steps it from the gateway's usage), then gets all the traffic or is taken out again.

Each change of weights is written with its audit row (``rollout.start``, ``.promote``, ``.rollback``,
``.abort``) in one transaction; the gateway reads routes from PostgreSQL on its next refresh (a second),
as it does for any route edit. Weights stay whole numbers 0..10000: at the start the baseline's weights
are scaled to share ``100 - p`` percent and the canary gets ``p`` percent (in hundredths, ``p * 100``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict, DomainError, Forbidden, Invalid
from serving import rollout_judge
from serving.choices import RolloutState
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Rollout
from serving.services import locks
from serving.services.route_kinds import MAX_ROUTES, require_one_kind

if TYPE_CHECKING:
    from portfolio.registry.models import ModelVersion

# Bounds of a rollout's policy: (default, lowest, highest).
CANARY_PERCENT = (5, 1, 50)
WINDOW_SECONDS = (600, 60, 86_400)
MIN_REQUESTS = (20, 1, 100_000)
MAX_ERROR_RATE_INCREASE = (0.02, 0.0, 1.0)
MAX_LATENCY_RATIO = (1.5, 1.0, 100.0)
JUDGE_FRACTION = (0.1, 0.01, 1.0)
MIN_JUDGE_SCORE = (0.6, 0.0, 1.0)
MIN_JUDGE_SAMPLES = (5, 1, 200)
MAX_JUDGE_RUBRIC = 2000


def _bounded(name: str, value, bounds: tuple, *, whole: bool):
    default, low, high = bounds
    if value is None:
        return default
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "a whole number" if whole else "a number"
        raise Invalid(
            f"{name}: {what} from {low:g} to {high:g}.", fields={name: [f"From {low:g} to {high:g}."]}
        )
    return value


def _candidate(
    actor: Actor, endpoint: Endpoint, deployment: str, adapter: str | None
) -> tuple[Deployment, DeploymentAdapter | None]:
    """A target the endpoint may route to: a deployment of its own team, or one of that one's adapters.
    (Not endpoint_routes.resolve_routes: the beat task's module would then import the reconcile's, a loop.)"""
    if not isinstance(deployment, str) or not deployment or len(deployment) > 63:
        raise Invalid("deployment: name the candidate's deployment.", fields={"deployment": ["Required."]})
    # Locked as endpoint_routes.resolve_routes locks it: not deleted before the canary's route to it commits.
    target = (
        Deployment.objects.visible_to(actor)
        .select_for_update(no_key=True, of=("self",))
        .filter(name=deployment)
        .first()
    )
    if target is None:
        raise Invalid(
            f"deployment: no deployment {deployment!r} visible to you.",
            fields={"deployment": ["No such deployment."]},
        )
    if target.owner_team_id != endpoint.owner_team_id:
        raise Invalid(
            "deployment: an endpoint routes to its own team's deployments only.",
            fields={"deployment": ["Choose a deployment of the endpoint's team."]},
        )
    # A canary of another kind of model would have the gateway refuse the endpoint's calls.
    routed = [r.deployment for r in endpoint.routes.select_related("deployment__version__model")]
    require_one_kind([*routed, target], field="deployment", endpoint=endpoint.name)
    if not adapter:
        return target, None
    attached = target.adapters.filter(name=adapter).first() if len(adapter) <= 63 else None
    if attached is None:
        raise Invalid(
            f"adapter: {target.name} serves no adapter {adapter[:63]!r}.",
            fields={"adapter": ["Not served by that deployment."]},
        )
    return target, attached


def _judge(
    endpoint: Endpoint,
    judge: str | None,
    rubric: str,
    fraction: float | None,
    min_score: float | None,
    min_samples: int | None,
) -> dict:
    """The rollout's judge settings, checked: a plain endpoint the endpoint's team may call (its calls are
    billed to that team), a rubric, and bounded numbers; none without a judge."""
    if not judge:
        if rubric or fraction is not None or min_score is not None or min_samples is not None:
            raise Invalid(
                "judge: the judge settings need a judge endpoint.",
                fields={"judge": ["Choose a judge endpoint."]},
            )
        return {}
    found = Endpoint.objects.callable_by(endpoint.owner_team).filter(name=judge).first()
    if found is None or found.pk == endpoint.pk or found.kind != "plain":
        raise Invalid(
            f"judge: no plain endpoint {judge[:63]!r} that {endpoint.owner_team.name} may call (other than "
            f"{endpoint.name}).",
            fields={"judge": ["Choose a plain endpoint the team may call."]},
        )
    if not isinstance(rubric, str) or len(rubric) > MAX_JUDGE_RUBRIC:
        raise Invalid(
            f"judge_rubric: at most {MAX_JUDGE_RUBRIC} characters.",
            fields={"judge_rubric": [f"At most {MAX_JUDGE_RUBRIC} characters."]},
        )
    sampler = rollout_judge.sampler()
    why = "no judge sampler is installed" if sampler is None else sampler.check(endpoint)
    if why:
        raise Invalid(f"judge: {endpoint.name}'s canary cannot be judged: {why}.", fields={"judge": [why]})
    return {
        "judge_endpoint": found,
        "judge_endpoint_name": found.name,
        "judge_rubric": rubric.strip(),
        "judge_fraction": float(_bounded("judge_fraction", fraction, JUDGE_FRACTION, whole=False)),
        "min_judge_score": float(_bounded("min_judge_score", min_score, MIN_JUDGE_SCORE, whole=False)),
        "min_judge_samples": _bounded("min_judge_samples", min_samples, MIN_JUDGE_SAMPLES, whole=True),
    }


def _key(route: EndpointRoute) -> tuple[str, str]:
    return route.deployment.name, route.adapter.name if route.adapter else ""


def add_step(rollout: Rollout, kind: str, reason: str, actor: Actor) -> None:
    """One more entry of the rollout's timeline (shown on the endpoint's page); saved by the caller."""
    rollout.steps = [
        *rollout.steps,
        {"at": timezone.now().isoformat(), "kind": kind, "reason": reason, "by": actor.label},
    ]


def _scaled(weights: dict[tuple[str, str], int], candidate: tuple[str, str], percent: int) -> dict:
    """The weights a canary of ``percent`` sets, by route: the other routes' scaled to share ``100 - percent``
    percent, the candidate's ``percent`` percent."""
    total = sum(weight for key, weight in weights.items() if key != candidate)
    scaled = {
        key: max(1, round(weight * (100 - percent) * 100 / total)) if weight else 0
        for key, weight in weights.items()
        if key != candidate
    }
    return scaled | {candidate: percent * 100}


def _canary_weights(routes: list[EndpointRoute], candidate: tuple[str, str], percent: int) -> None:
    set_to = _scaled({_key(r): r.weight for r in routes}, candidate, percent)
    for route in routes:
        route.weight = set_to[_key(route)]


@transaction.atomic
def start_rollout(
    *,
    actor: Actor,
    endpoint: Endpoint,
    deployment: str,
    adapter: str | None = None,
    canary_percent: int | None = None,
    window_seconds: int | None = None,
    min_requests: int | None = None,
    max_error_rate_increase: float | None = None,
    max_latency_ratio: float | None = None,
    judge: str | None = None,
    judge_rubric: str = "",
    judge_fraction: float | None = None,
    min_judge_score: float | None = None,
    min_judge_samples: int | None = None,
    why: str = "",
) -> Rollout:
    """Give the candidate (a deployment of the endpoint's team, or one of its adapters) the canary weight
    and start watching it; one active rollout per endpoint. ``why`` starts the first step's reason. A
    ``judge`` endpoint scores a ``judge_fraction`` sample of the canary's answers on ``judge_rubric``; a mean
    under ``min_judge_score`` (over ``min_judge_samples`` at least) rolls back."""
    gate.require(actor, "deployment.manage", endpoint)
    # The judge's row is locked with the endpoint's: it is not deleted before this rollout, which names it,
    # commits (delete_endpoint refuses to delete the judge of a canary under way), and one deleted meanwhile is
    # not found. In id order: two rollouts judged by each other's endpoint wait, not deadlock.
    named = Endpoint.objects.filter(name=judge).values_list("pk", flat=True).first() if judge else None
    endpoint = locks.endpoint(endpoint.pk, also=named)
    if endpoint.kind != "plain":
        raise Invalid(
            f"{endpoint.name} is a {endpoint.kind} endpoint, with no routes to roll out on: roll out on the "
            "plain endpoints it calls."
        )
    policy = {
        "canary_percent": _bounded("canary_percent", canary_percent, CANARY_PERCENT, whole=True),
        "window_seconds": _bounded("window_seconds", window_seconds, WINDOW_SECONDS, whole=True),
        "min_requests": _bounded("min_requests", min_requests, MIN_REQUESTS, whole=True),
        "max_error_rate_increase": float(
            _bounded("max_error_rate_increase", max_error_rate_increase, MAX_ERROR_RATE_INCREASE, whole=False)
        ),
        "max_latency_ratio": float(
            _bounded("max_latency_ratio", max_latency_ratio, MAX_LATENCY_RATIO, whole=False)
        ),
    }
    judged = _judge(endpoint, judge, judge_rubric, judge_fraction, min_judge_score, min_judge_samples)
    most = rollout_judge.most_samples(policy["window_seconds"])
    if judged and judged["min_judge_samples"] > most:
        # Otherwise every canary, healthy or not, would be rolled back at the window's end for too few.
        raise Invalid(
            f"min_judge_samples: a watch window of {policy['window_seconds']} s has at most {most} canary "
            f"answers judged ({rollout_judge.JUDGE_PER_CHECK} a check every {rollout_judge.CHECK_SECONDS} s, "
            f"{rollout_judge.JUDGE_MAX_SAMPLES} in all): ask for fewer, or watch longer.",
            fields={"min_judge_samples": [f"At most {most} with this window."]},
        )
    if Rollout.objects.filter(endpoint=endpoint, state=RolloutState.CANARY).exists():
        raise Conflict(f"{endpoint.name} has a rollout under way: let it finish or abort it first.")
    target, attached = _candidate(actor, endpoint, deployment, adapter)
    candidate = (target.name, attached.name if attached else "")
    routes = list(endpoint.routes.select_related("deployment", "adapter"))
    label = "/".join(part for part in candidate if part)
    if any(_key(r) == candidate and r.weight for r in routes):
        raise Invalid(
            f"deployment: {endpoint.name} already routes to {label}; a canary is a target it does not route to "
            "yet (set its weight to 0 first, or choose another).",
            fields={"deployment": ["Already one of the endpoint's routes."]},
        )
    if not any(r.weight for r in routes if _key(r) != candidate):
        raise Invalid(f"{endpoint.name} has no route with traffic to compare the canary with.")
    before = endpoint.snapshot()
    if not any(_key(r) == candidate for r in routes):
        if len(routes) >= MAX_ROUTES:  # a rolled-back canary keeps its route, at weight 0
            raise Invalid(
                f"{endpoint.name} has {len(routes)} routes, the most an endpoint may have: remove routes at "
                "weight 0 (earlier canaries) before a canary of another target."
            )
        routes.append(EndpointRoute(endpoint=endpoint, deployment=target, adapter=attached, weight=0))
    _canary_weights(routes, candidate, policy["canary_percent"])
    for route in routes:
        route.save()
    now = timezone.now()
    rollout = Rollout(
        endpoint=endpoint,
        deployment=candidate[0],
        adapter=candidate[1],
        baseline=before["routes"],
        ends_at=now + timedelta(seconds=policy["window_seconds"]),
        started_at=now,
        started_by=actor.user,
        **policy,
        **judged,
    )
    add_step(
        rollout,
        "start",
        f"{why + ' ' if why else ''}Canary {label} at {policy['canary_percent']}% of the traffic, watched for "
        f"{policy['window_seconds'] // 60} min."
        + (
            f" {judged['judge_endpoint_name']} judges {judged['judge_fraction']:.0%} of its answers; a mean under "
            f"{judged['min_judge_score']:.2f} rolls back."
            if judged
            else ""
        ),
        actor,
    )
    try:
        with transaction.atomic():
            rollout.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"{endpoint.name} has a rollout under way: let it finish or abort it first.") from None
    audit.record(actor, "rollout.start", rollout, before=before, after=_after(rollout, endpoint))
    return rollout


def _after(rollout: Rollout, endpoint: Endpoint) -> dict:
    return {**endpoint.snapshot(), "rollout": rollout.snapshot()}


def finish(rollout: Rollout, state: str, reason: str, actor: Actor, *, full: bool) -> Rollout:
    """Locked by the caller (endpoint, then rollout): promote (``full``: the candidate gets all the
    traffic, the other routes 0) or take the canary out (``_taken_out``)."""
    endpoint = rollout.endpoint
    before = endpoint.snapshot()
    candidate = (rollout.deployment, rollout.adapter)
    routes = list(endpoint.routes.select_related("deployment", "adapter"))
    if full:
        weights = {_key(route): 100 if _key(route) == candidate else 0 for route in routes}
    else:
        weights, kept = _taken_out(rollout, {_key(route): route.weight for route in routes})
        reason += kept
    for route in routes:
        if route.weight != weights[_key(route)]:
            route.weight = weights[_key(route)]
            route.save(update_fields=["weight"])
    rollout.state, rollout.reason, rollout.finished_at = state, reason, timezone.now()
    actions: dict[str, str] = {
        RolloutState.PROMOTED: "rollout.promote",
        RolloutState.ROLLED_BACK: "rollout.rollback",
        RolloutState.ABORTED: "rollout.abort",
    }
    add_step(rollout, actions[state].split(".", 1)[1], reason, actor)
    rollout.save(update_fields=["state", "reason", "finished_at", "steps", "figures", "checked_at"])
    audit.record(actor, actions[state], rollout, before=before, after=_after(rollout, endpoint))
    return rollout


def _taken_out(rollout: Rollout, now: dict[tuple[str, str], int]) -> tuple[dict, str]:
    """The routes' weights once the canary is taken out (rolled back, aborted), and a note for the reason:
    the canary's weight back to what it was before, and the other routes' too where they still have the
    weights the canary gave them. A route edited since the canary started keeps the edit (an operator who
    drained a route meant it). Should no route be left with traffic, the canary keeps its weight: a
    rollback never leaves the endpoint with nowhere to send its calls."""
    candidate = (rollout.deployment, rollout.adapter)
    baseline = {(r["deployment"], r["adapter"] or ""): r["weight"] for r in rollout.baseline}
    given = _scaled(baseline, candidate, rollout.canary_percent)
    weights = {}
    for key, weight in now.items():
        if key == candidate:
            weights[key] = baseline.get(key, 0)
        elif key in baseline and weight == given.get(key):  # as the canary left it: back to before
            weights[key] = baseline[key]
        else:  # edited since the canary started, or added since: the edit stands
            weights[key] = weight
    if any(weights.values()) or not now.get(candidate):
        return weights, ""
    return weights | {candidate: now[candidate]}, (
        " The canary keeps its weight: no other route of the endpoint takes traffic now."
    )


def promote(*, actor: Actor, rollout: Rollout, reason: str) -> Rollout:
    return finish(rollout, RolloutState.PROMOTED, reason, actor, full=True)


def roll_back(*, actor: Actor, rollout: Rollout, reason: str) -> Rollout:
    return finish(rollout, RolloutState.ROLLED_BACK, reason, actor, full=False)


@transaction.atomic
def abort_rollout(*, actor: Actor, endpoint: Endpoint, reason: str = "") -> Rollout:
    """Stop the endpoint's rollout under way: the weights as ``_taken_out`` leaves them."""
    gate.require(actor, "deployment.manage", endpoint)
    endpoint = locks.endpoint(endpoint.pk)
    rollout = (
        Rollout.objects.select_for_update(of=("self",))
        .filter(endpoint=endpoint, state=RolloutState.CANARY)
        .select_related("endpoint")
        .first()
    )
    if rollout is None:
        raise Conflict(f"{endpoint.name} has no rollout under way.")
    rollout.endpoint = endpoint
    return finish(rollout, RolloutState.ABORTED, reason or f"Aborted by {actor.label}.", actor, full=False)


# --- Promotion drives traffic ---------------------------------------------------------------------------
FOLLOWED_ALIAS = "production"


def _serving(version: ModelVersion, endpoint: Endpoint) -> tuple[str, str] | None:
    """Where the endpoint's team serves ``version``: (deployment, adapter or ""), preferring a deployment
    the endpoint already routes to (an adapter hot-loaded next to the baseline), then a running one."""
    routed = set(endpoint.routes.values_list("deployment_id", flat=True))
    found: list[tuple[bool, bool, str, str]] = [
        (d.pk not in routed, d.status != "running", d.name, "")
        for d in Deployment.objects.filter(version=version, owner_team_id=endpoint.owner_team_id)
    ]
    found += [
        (a.deployment_id not in routed, a.deployment.status != "running", a.deployment.name, a.name)
        for a in DeploymentAdapter.objects.filter(
            version=version, deployment__owner_team_id=endpoint.owner_team_id
        ).select_related("deployment")
    ]
    return min(found)[2:] if found else None


def _served(endpoint_routes) -> list[ModelVersion]:
    """The versions the routes with traffic serve (an adapter's, else its deployment's)."""
    return [r.adapter.version if r.adapter else r.deployment.version for r in endpoint_routes if r.weight]


def follow_promotion(
    actor: Actor, version: ModelVersion, previous: ModelVersion | None, alias: str, endpoint: str
) -> list[str]:
    """The registry's promotion follower (registered in ``ServingConfig.ready``): a promotion for an
    endpoint starts a rollout of the version there.

    An endpoint named: that one; a refusal (not visible, not deployed, a rollout under way) undoes the
    promotion. None named and the alias is ``production`` (moved from a previous holder): every endpoint the
    actor may see whose routes send traffic to another version of the model, not only to the previous holder
    (after a rolled-back rollout the alias names the rejected version while traffic stays on the one before);
    one that cannot start is left as it is, with the reason said."""
    why = f"On promotion of {version.label} to {alias}."
    if endpoint:
        target = Endpoint.objects.visible_to(actor).filter(name=endpoint).first()
        if target is None:
            raise Invalid(
                f"endpoint: no endpoint {endpoint!r} visible to you.",
                fields={"endpoint": ["No such endpoint."]},
            )
        serving = _serving(version, target)
        if serving is None:
            raise Invalid(
                f"endpoint: {version.label} is not deployed by a deployment of {target.name}'s team; deploy it first.",
                fields={"endpoint": ["Deploy the version first."]},
            )
        start_rollout(
            actor=actor, endpoint=target, deployment=serving[0], adapter=serving[1] or None, why=why
        )
        return [f"Rollout of {'/'.join(p for p in serving if p)} started on {target.name}."]
    if alias != FOLLOWED_ALIAS or previous is None or previous.pk == version.pk:
        return []
    notes = []
    endpoints = (
        Endpoint.objects.visible_to(actor)
        .filter(
            Q(routes__deployment__version__model_id=version.model_id)
            | Q(routes__adapter__version__model_id=version.model_id)
        )
        .distinct()
        .order_by("name")
    )
    for target in endpoints:
        routes = list(target.routes.select_related("deployment__version", "adapter__version"))
        served = _served(routes)
        if version in served or all(other.model_id != version.model_id for other in served):
            continue
        serving = _serving(version, target)
        if serving is None:
            notes.append(f"{target.name}: no rollout, {version.label} is not deployed for it.")
            continue
        try:
            start_rollout(
                actor=actor, endpoint=target, deployment=serving[0], adapter=serving[1] or None, why=why
            )
        except Forbidden:
            notes.append(f"{target.name}: no rollout, you may not change its routes.")
        except DomainError as exc:
            notes.append(f"{target.name}: no rollout, {exc}")
        else:
            notes.append(f"Rollout of {'/'.join(p for p in serving if p)} started on {target.name}.")
    return notes
