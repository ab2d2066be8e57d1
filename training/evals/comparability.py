"""When two eval runs, or a run and what an endpoint serves now, may be compared.

- What a run measured: the endpoint's serving routes when the worker took the run up (``measured_now``,
  kept as ``EndpointEvalRun.measured_routes``): deployment, its version, adapter and its version, weight;
  a composite endpoint's (router, cascade, vote: no routes of its own) kind and configuration. An endpoint
  repointed or reconfigured since (another deployment, a new version in place, other weights, another
  threshold or hop) is not what was measured: its run's scores say nothing of it (``repointed``). A
  composite's hops repointed since are not followed.
- Runs of one eval set compared side by side on a leaderboard, a front or a hint: a run that covered fewer
  rows than the reference run (unless it covered the eval set whole), or answered with another
  ``max_tokens``, was measured under other settings (``incomparable``).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Prefetch

from serving.choices import EndpointKind
from serving.models import Endpoint, EndpointRoute
from training.evals.models import EndpointEvalRun


def _route(route: EndpointRoute) -> dict:
    return {
        "deployment": route.deployment.name,
        "deployment_id": route.deployment_id,
        "version_id": route.deployment.version_id,
        "adapter": route.adapter.name if route.adapter else "",
        "adapter_id": route.adapter_id,
        "adapter_version_id": route.adapter.version_id if route.adapter else None,
        "weight": route.weight,
    }


def serving(routes: Iterable[EndpointRoute]) -> list[dict]:
    """The routes that take traffic (weight above 0), in a fixed order, as a run records them."""
    found = [_route(route) for route in routes if route.weight]
    return sorted(found, key=lambda r: (r["deployment_id"], r["adapter_id"] or 0, r["weight"]))


def measured(endpoint: Endpoint, routes: Iterable[EndpointRoute]) -> list[dict]:
    """What a run of ``endpoint`` measures, given its ``routes``: they, or a composite's kind and
    configuration (it has no routes of its own)."""
    if endpoint.kind != EndpointKind.PLAIN:
        return [{"kind": endpoint.kind, "config": endpoint.config}]
    return serving(routes)


def measured_now(endpoint_id: int) -> list[dict]:
    """What the endpoint serves now, as a run records it ([] when it is gone)."""
    endpoint = Endpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        return []
    routes = EndpointRoute.objects.filter(endpoint_id=endpoint_id).select_related("deployment", "adapter")
    return measured(endpoint, routes)


def repointed(run: EndpointEvalRun, endpoint: Endpoint, current: Iterable[EndpointRoute]) -> bool:
    """Whether ``endpoint`` routes elsewhere, or is configured otherwise, than when ``run`` measured it. A
    run taken up before routes were recorded (None), or a composite's run taken up before configurations
    were ([]), is taken as measuring what the endpoint serves now."""
    if run.measured_routes is None or (run.measured_routes == [] and endpoint.kind != EndpointKind.PLAIN):
        return False
    return run.endpoint_id != endpoint.pk or run.measured_routes != measured(endpoint, current)


def repointed_runs(runs: Iterable[EndpointEvalRun]) -> set[int]:
    """The ids of ``runs`` whose endpoint, still there, is ``repointed`` since (two queries)."""
    runs = [run for run in runs if run.endpoint_id and run.measured_routes is not None]
    routes = EndpointRoute.objects.select_related("deployment", "adapter")
    endpoints = Endpoint.objects.filter(pk__in={run.endpoint_id for run in runs}).prefetch_related(
        Prefetch("routes", queryset=routes)
    )
    by_id = {endpoint.pk: endpoint for endpoint in endpoints}
    return {
        run.pk
        for run in runs
        if (endpoint := by_id.get(run.endpoint_id or 0)) is not None
        and repointed(run, endpoint, endpoint.routes.all())
    }


def incomparable(run: EndpointEvalRun, reference: EndpointEvalRun, eval_set_rows: int) -> str:
    """Why ``run`` cannot be ranked beside ``reference`` (same eval set), "" when it can."""
    if run.max_tokens != reference.max_tokens:
        return f"answered with max_tokens {run.max_tokens}, not {reference.max_tokens}"
    partial = min(run.rows_total, reference.rows_total) < eval_set_rows
    if partial and run.scored_first_rows != reference.scored_first_rows:
        older = run if run.scored_first_rows else reference
        return (
            f"{older.endpoint_name}'s run scored the set's first rows (before runs sampled the whole set), "
            "the other rows spread over it: run it again"
        )
    needed = min(reference.rows_total, eval_set_rows)
    if run.rows_total < needed:
        rows = f"{run.rows_total} row{'' if run.rows_total == 1 else 's'}"
        return f"scored {rows}, fewer than the {needed} of {reference.endpoint_name}'s run"
    return ""


def reference_run(runs: list[EndpointEvalRun], production_id: int | None = None) -> EndpointEvalRun | None:
    """The run the others are compared with: the production endpoint's, else the one that scored the most
    rows (the newest of those)."""
    if production_id is not None:
        found = next((run for run in runs if run.endpoint_id == production_id), None)
        if found is not None:
            return found
    if not runs:
        return None
    return max(runs, key=lambda run: (run.rows_total, run.created_at, run.pk))
