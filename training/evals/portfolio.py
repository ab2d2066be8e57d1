"""The portfolio: one row per task the actor sees, with the endpoint that serves it in production, that
endpoint's figures on the task's eval set (quality, p50 latency, cost per 1,000 requests from its latest
finished run), its traffic (requests per day over the last 7 days, from the hourly usage rollups), and a
hint when another candidate on the same eval set would do as well for less: one measured as it serves now,
on at least as many rows as production's run and with the same ``max_tokens`` (``comparability``). One
action starts a canary of that candidate on the production endpoint, through serving's rollout service
(which gates and audits it). A version or size is shown only of a model the reader may see in the registry
(``visible_tasks``).

Contract: a page of rows costs a fixed number of queries, however many tasks, eval sets, runs and
endpoints it shows (``Rows`` builds a page at once; tests pin the count). The raw usage events are never
read: traffic comes from ``UsageHourly``.

Which eval set a row reads: the task's newest eval set on which its production endpoint has a finished
run; else its newest eval set with any finished run; else its newest eval set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.contrib.postgres.fields import ArrayField
from django.db import transaction
from django.db.models import BigIntegerField, Prefetch, Q, QuerySet, Sum, Value
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid, NotFound
from portfolio.registry.models import Model as RegistryModel
from portfolio.templatetags.formatting import human_count
from serving import services as serving_services
from serving.choices import EndpointKind, RolloutState
from serving.gateway.models import UsageHourly
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Rollout
from serving.services import composite, locks
from training.choices import JobStatus
from training.evals import comparability
from training.evals.models import EndpointEvalRun, EvalSet, Task

TRAFFIC_DAYS = 7


def hint_margin() -> float:
    """How far under production's quality a candidate may score and still be hinted at (0.02 by default)."""
    return settings.PORTFOLIO_HINT_MARGIN_POINTS / 100


@dataclass(frozen=True)
class Figures:
    """One endpoint's figures on an eval set (its latest finished run), and the size of what serves it."""

    endpoint: str
    quality: float | None
    latency_p50_ms: float | None = None
    cost_per_1k: float | None = None
    parameters: int | None = None
    run_id: int | None = None
    finished_at: datetime | None = None
    # The route target a canary would send traffic to: (deployment, adapter or ""), and its team.
    target: tuple[str, str] | None = None
    target_team_id: int | None = None
    # The endpoint routes elsewhere now than when the run measured it: its figures are not of what it serves.
    repointed: bool = False
    # A router, cascade or vote endpoint: what it measured is its composition, not a route target of its own.
    composite: str = ""

    @property
    def label(self) -> str:
        return f"{self.endpoint} ({human_count(self.parameters)})" if self.parameters else self.endpoint

    @property
    def summary(self) -> str:
        """ "ticket-router (134.5M): 0.94 at 0.02/1k" """
        quality = "—" if self.quality is None else f"{self.quality:.2f}"
        return f"{self.label}: {quality} at {money(self.cost_per_1k)}/1k"


def money(value: float | None) -> str:
    """A cost per 1,000 requests as the hint writes it: two decimals, or two significant digits under 0.1."""
    if value is None:
        return "unpriced"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _cheaper(candidate: Figures, production: Figures) -> bool:
    return (
        candidate.cost_per_1k is not None
        and production.cost_per_1k is not None
        and candidate.cost_per_1k < production.cost_per_1k
    )


def _smaller(candidate: Figures, production: Figures) -> bool:
    return bool(
        candidate.parameters and production.parameters and candidate.parameters < production.parameters
    )


def _no_dearer(candidate: Figures, production: Figures) -> bool:
    """Costs no more and is no larger, as far as either is known (an unpriced candidate of a priced
    production endpoint is not known to cost no more)."""
    if production.cost_per_1k is not None and (
        candidate.cost_per_1k is None or candidate.cost_per_1k > production.cost_per_1k
    ):
        return False
    return not (
        candidate.parameters and production.parameters and candidate.parameters > production.parameters
    )


def _points(value: float) -> Decimal:
    """A quality or margin in points, exactly to a millionth of a point: in floats 0.14 - 0.02 is
    0.12000000000000001, so a candidate exactly at the margin would fall outside it."""
    return Decimal(f"{value * 100:.6f}")


def pick_candidate(production: Figures, candidates: Sequence[Figures], margin: float) -> Figures | None:
    """The candidate to hint at, or None: one that scores within ``margin`` of production's quality and is
    cheaper per 1,000 requests or smaller, or that scores better by more than ``margin`` at no more cost
    and size. The cheapest such first, then the best, then the smallest. Qualities are compared in
    ``_points``."""
    if production.quality is None:
        return None
    quality, points = _points(production.quality), _points(margin)
    floor, ceiling = quality - points, quality + points
    fitting = [
        c
        for c in candidates
        if c.endpoint != production.endpoint
        and c.quality is not None
        and _points(c.quality) >= floor
        and (
            _cheaper(c, production)
            or _smaller(c, production)
            or (_points(c.quality) > ceiling and _no_dearer(c, production))
        )
    ]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda c: (
            c.cost_per_1k is None,
            c.cost_per_1k or 0.0,
            -_points(c.quality or 0.0),
            c.parameters or 0,
            c.endpoint,
        ),
    )


@dataclass(frozen=True)
class Hint:
    candidate: Figures
    production: Figures
    # Why one action cannot start a canary of it (empty: it can, for who may change the endpoint).
    blocked: str = ""

    @property
    def text(self) -> str:
        """ "ticket-router (134.5M): 0.94 at 0.02/1k vs smollm2 (134.5M): 0.44 at 0.05/1k" """
        return f"{self.candidate.summary} vs {self.production.summary}"


@dataclass
class Row:
    """One task on the portfolio page. ``incomparable``: candidates not ranked beside production (hinted
    at), each with why: scored on fewer rows or with another ``max_tokens`` than production's run."""

    task: Task
    eval_set: EvalSet | None = None
    endpoint: Endpoint | None = None
    version: str | None = None
    production: Figures | None = None
    candidates: list[Figures] = field(default_factory=list)
    requests_per_day: float | None = None
    last_evaluated: datetime | None = None
    hint: Hint | None = None
    incomparable: dict[str, str] = field(default_factory=dict)


def _routes(endpoint: Endpoint) -> list[EndpointRoute]:
    """The endpoint's routes, heaviest first, as ``_endpoints`` prefetched them."""
    return endpoint.ordered_routes  # type: ignore[attr-defined]  # set by _endpoints' Prefetch


def _main_route(endpoint: Endpoint) -> EndpointRoute | None:
    """The route with the most traffic."""
    routes = [route for route in _routes(endpoint) if route.weight]
    return routes[0] if routes else None


def _figures(run: EndpointEvalRun, endpoint: Endpoint | None, readable: set[int]) -> Figures:
    """``readable``: the models the reader may see in the registry; another's size is not shown."""
    composite = endpoint.kind if endpoint is not None and endpoint.kind != EndpointKind.PLAIN else ""
    # A composite's routes are those it kept from before it was one: it calls other endpoints, never them.
    route = _main_route(endpoint) if endpoint is not None and not composite else None
    seen = route is not None and route.deployment.version.model_id in readable
    return Figures(
        endpoint=run.endpoint_name,
        quality=run.metrics.get("quality"),
        latency_p50_ms=run.metrics.get("latency_p50_ms"),
        cost_per_1k=run.metrics.get("cost_per_1k_requests"),
        # What serves the endpoint runs the deployment's base, adapter or not: that is its size.
        parameters=route.deployment.version.parameter_count if route and seen else None,
        run_id=run.pk,
        finished_at=run.finished_at,
        target=(route.deployment.name, route.adapter.name if route.adapter else "") if route else None,
        target_team_id=route.deployment.owner_team_id if route else None,
        repointed=endpoint is not None and comparability.repointed(run, endpoint, _routes(endpoint)),
        composite=composite,
    )


def _blocked(candidate: Figures, endpoint: Endpoint) -> str:
    """Why serving's rollout service would refuse a canary of ``candidate`` on ``endpoint``, as far as the
    rows already read tell ("" when it would start it)."""
    if candidate.repointed:
        return (
            f"{candidate.endpoint} routes elsewhere than when eval run #{candidate.run_id} measured it: "
            "evaluate it again."
        )
    if candidate.composite:
        return (
            f"{candidate.endpoint} is a {candidate.composite} endpoint: make it the task's production endpoint, "
            "or roll out on the endpoints it calls."
        )
    if candidate.target is None:
        return f"{candidate.endpoint} routes nowhere now."
    if candidate.target_team_id != endpoint.owner_team_id:
        return f"{candidate.endpoint} is served by another team's deployment: {endpoint.name} cannot route to it."
    for route in _routes(endpoint):
        if (
            route.weight
            and (route.deployment.name, route.adapter.name if route.adapter else "") == candidate.target
        ):
            return f"{endpoint.name} already routes to {'/'.join(p for p in candidate.target if p)}."
    if endpoint.active_rollouts:  # type: ignore[attr-defined]  # set by _endpoints' Prefetch
        return f"{endpoint.name} has a rollout under way."
    return ""


def _endpoints(ids: set[int]) -> dict[int, Endpoint]:
    routes = EndpointRoute.objects.select_related(
        "deployment__version", "adapter__version__model", "deployment__version__model"
    ).order_by("-weight", "id")
    canaries = Rollout.objects.filter(state=RolloutState.CANARY)
    # Its team joined: the page asks ``gate.can`` of each row's endpoint (a department manager's, its team's).
    found = (
        Endpoint.objects.filter(pk__in=ids)
        .select_related("owner_team")
        .prefetch_related(
            Prefetch("routes", queryset=routes, to_attr="ordered_routes"),
            Prefetch("rollouts", queryset=canaries, to_attr="active_rollouts"),
        )
    )
    return {endpoint.pk: endpoint for endpoint in found}


def _version(endpoint: Endpoint, readable: set[int]) -> str | None:
    """The version the endpoint mainly serves, if the reader may see its model in the registry."""
    route = _main_route(endpoint)
    if route is None:
        return None
    version = route.adapter.version if route.adapter else route.deployment.version
    return version.label if version.model_id in readable else None


def _traffic(endpoints: Sequence[Endpoint], now: datetime) -> dict[str, dict[int | None, float]]:
    """Requests per day of each endpoint over the last ``TRAFFIC_DAYS`` days, by calling team, from the
    hourly rollups: a plain endpoint's calls (as a composite's hop too), a composite's the calls of its
    first hop via it (a composite bills only its hops, each call's first hop once)."""
    if not endpoints:
        return {}
    since = now - timedelta(days=TRAFFIC_DAYS)
    plain = {e.name for e in endpoints if e.kind == EndpointKind.PLAIN}
    first_hops = {e.name: composite.first_hop(e) for e in endpoints if e.kind != EndpointKind.PLAIN}
    wanted = Q(endpoint__in=plain)
    for name, hop in first_hops.items():
        wanted |= Q(via=name, endpoint=hop)
    sums = (
        UsageHourly.objects.filter(wanted, hour__gte=since)
        .values("endpoint", "via", "team_id")
        .annotate(requests=Sum("requests"))
    )
    traffic: dict[str, dict[int | None, float]] = {}

    def add(name: str, team_id: int | None, per_day: float) -> None:
        teams = traffic.setdefault(name, {})
        teams[team_id] = teams.get(team_id, 0.0) + per_day

    for item in sums:
        per_day = (item["requests"] or 0) / TRAFFIC_DAYS
        if item["endpoint"] in plain:
            add(item["endpoint"], item["team_id"], per_day)
        if item["via"] and first_hops.get(item["via"]) == item["endpoint"]:
            add(item["via"], item["team_id"], per_day)
    return traffic


def _requests_per_day(by_team: dict[int | None, float], task: Task, endpoint: Endpoint) -> float:
    """An endpoint's owner sees all its calls; a task served by another team's shared endpoint, only its
    own team's calls to it (the other teams' traffic is theirs)."""
    if endpoint.owner_team_id == task.owner_team_id:
        return sum(by_team.values())
    return by_team.get(task.owner_team_id, 0.0)


def build_rows(
    tasks: Sequence[Task], *, margin: float | None = None, now: datetime | None = None
) -> list[Row]:
    """The rows of ``tasks`` (already visible to the reader, with ``owner_team`` and
    ``production_endpoint`` selected), in a fixed number of queries. Tasks not read by ``visible_tasks``
    (without ``readable_model_ids``) show no model's version or size."""
    margin = hint_margin() if margin is None else margin
    now = now or timezone.now()
    rows = [Row(task=task) for task in tasks]
    if not rows:
        return rows
    eval_sets: dict[int, list[EvalSet]] = {}
    found = EvalSet.objects.filter(task__in=[row.task.pk for row in rows]).select_related(
        "dataset_version__dataset"
    )
    for eval_set in found.order_by("-created_at", "-id"):
        eval_sets.setdefault(eval_set.task_id, []).append(eval_set)
    set_ids = [s.pk for sets in eval_sets.values() for s in sets]
    # The latest finished run of each endpoint on each eval set (PostgreSQL's DISTINCT ON: one query).
    latest = list(
        EndpointEvalRun.objects.filter(eval_set_id__in=set_ids, status=JobStatus.SUCCEEDED)
        .defer("answers")  # up to 2,000 kept answers a run: the figures need none of them
        .order_by("eval_set_id", "endpoint_name", "-created_at", "-id")
        .distinct("eval_set_id", "endpoint_name")
    )
    runs_by_set: dict[int, list[EndpointEvalRun]] = {}
    for run in latest:
        runs_by_set.setdefault(run.eval_set_id, []).append(run)
    endpoint_ids = {run.endpoint_id for run in latest if run.endpoint_id} | {
        row.task.production_endpoint_id for row in rows if row.task.production_endpoint_id
    }
    endpoints = _endpoints(endpoint_ids)
    production_ids = {row.task.production_endpoint_id for row in rows}
    traffic = _traffic([e for pk, e in endpoints.items() if pk in production_ids], now)
    for row in rows:
        readable = set(getattr(row.task, "readable_model_ids", None) or ())
        production = endpoints.get(row.task.production_endpoint_id or 0)
        sets = eval_sets.get(row.task.pk, [])
        row.eval_set = _chosen_set(sets, runs_by_set, production)
        runs = runs_by_set.get(row.eval_set.pk, []) if row.eval_set else []
        figures = [_figures(run, endpoints.get(run.endpoint_id or 0), readable) for run in runs]
        row.last_evaluated = max((run.finished_at for run in runs if run.finished_at), default=None)
        if production is None:
            row.candidates = figures
            continue
        row.endpoint = production
        row.version = _version(production, readable)
        row.requests_per_day = _requests_per_day(traffic.get(production.name, {}), row.task, production)
        row.production = next((f for f in figures if f.endpoint == production.name), None)
        row.candidates = [f for f in figures if f.endpoint != production.name]
        # Production's own figures measured what it served then: compared with nothing, said on the row.
        if row.production is not None and row.eval_set is not None and not row.production.repointed:
            row.incomparable = _incomparable(runs, production.pk, row.eval_set.row_count)
            # Only what was measured as it serves now, under production's run's settings, is hinted at.
            hintable = [c for c in row.candidates if not c.repointed and c.endpoint not in row.incomparable]
            candidate = pick_candidate(row.production, hintable, margin)
            if candidate is not None:
                row.hint = Hint(
                    candidate=candidate, production=row.production, blocked=_blocked(candidate, production)
                )
    return rows


def _incomparable(runs: list[EndpointEvalRun], production: int, eval_set_rows: int) -> dict[str, str]:
    reference = comparability.reference_run(runs, production)
    if reference is None:
        return {}
    found = {run.endpoint_name: comparability.incomparable(run, reference, eval_set_rows) for run in runs}
    return {name: why for name, why in found.items() if why}


def _chosen_set(
    sets: list[EvalSet], runs_by_set: dict[int, list[EndpointEvalRun]], production: Endpoint | None
) -> EvalSet | None:
    if production is not None:
        for eval_set in sets:
            if any(run.endpoint_name == production.name for run in runs_by_set.get(eval_set.pk, [])):
                return eval_set
    return next((s for s in sets if runs_by_set.get(s.pk)), sets[0] if sets else None)


def visible_tasks(actor: Actor) -> QuerySet[Task]:
    """The tasks the actor sees, in the page's order, each with ``readable_model_ids``: the deployed models
    the actor may see in the registry (``gate.visible``), whose versions and sizes the rows may show (a task
    served by another team's shared endpoint does not show that team's private model). In the tasks' own
    query: the page costs no query more."""
    deployed = Q(pk__in=Deployment.objects.values("version__model_id")) | Q(
        pk__in=DeploymentAdapter.objects.values("version__model_id")
    )
    models = gate.visible(actor, RegistryModel).filter(deployed).values("pk")
    readable = (
        Value([], output_field=ArrayField(BigIntegerField()))
        if models.query.is_empty()
        else ArraySubquery(models)
    )
    return (
        gate.visible(actor, Task)
        .select_related("owner_team", "production_endpoint")
        .annotate(readable_model_ids=readable)
        .order_by("owner_team__slug", "slug", "id")
    )


class Rows:
    """The portfolio as a sequence a paginator can page: counting asks the database once, and a slice is
    one page of rows built at once (``build_rows``)."""

    def __init__(self, tasks: QuerySet[Task]):
        self.tasks = tasks

    def count(self) -> int:
        return self.tasks.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return build_rows(list(self.tasks[index]))
        return build_rows([self.tasks[index]])[0]


def row_for(actor: Actor, task_id: int) -> Row:
    """One task's row (404 for a task the actor may not see)."""
    task = visible_tasks(actor).filter(pk=task_id).first()
    if task is None:
        raise NotFound("Task not found.")
    return build_rows([task])[0]


@transaction.atomic
def set_production_endpoint(*, actor: Actor, task: Task, endpoint: Endpoint | None) -> Task:
    """Name the endpoint that serves ``task`` in production (None: none): one its team may call."""
    gate.require(actor, "training.run", task)
    task = (
        Task.objects.select_for_update(of=("self",))
        .select_related("owner_team", "production_endpoint")
        .get(pk=task.pk)
    )
    if endpoint is not None:
        # Locked as a delete locks it: one under way is waited for, then found gone (its foreign key would
        # otherwise fail at commit, a 500).
        endpoint = locks.endpoint(endpoint.pk)
        if not Endpoint.objects.callable_by(task.owner_team).filter(pk=endpoint.pk).exists():
            raise NotFound("Endpoint not found.")
    before = task.snapshot()
    task.production_endpoint = endpoint
    task.save(update_fields=["production_endpoint"])
    audit.record(actor, "task.set_production", task, before=before, after=task.snapshot())
    return task


@transaction.atomic
def start_canary(*, actor: Actor, task: Task, candidate: str, canary_percent: int | None = None) -> Rollout:
    """Start a canary of ``candidate`` (an endpoint with a finished run on the task's eval set) on the task's
    production endpoint: its heaviest route target gets the canary weight. Serving's rollout service decides
    whether the actor may change the endpoint (403), and audits the start. A candidate that routes elsewhere
    now than when its latest run measured it is refused (409): what it serves was never evaluated."""
    row = row_for(actor, task.pk)
    if row.endpoint is None:
        raise Invalid(f"{task.name} has no production endpoint: name one first.")
    gate.require(actor, "deployment.manage", row.endpoint)
    found = next((c for c in row.candidates if c.endpoint == candidate), None)
    if found is None:
        raise Invalid(
            f"candidate: {candidate[:63]!r} has no finished eval run on {task.name}'s eval set.",
            fields={"candidate": ["Not an evaluated candidate of the task."]},
        )
    blocked = _blocked(found, row.endpoint)
    if blocked or found.target is None:
        raise Conflict(blocked)
    deployment, adapter = found.target
    return serving_services.start_rollout(
        actor=actor,
        endpoint=row.endpoint,
        deployment=deployment,
        adapter=adapter or None,
        canary_percent=canary_percent,
    )
