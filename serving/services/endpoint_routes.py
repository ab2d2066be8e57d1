"""An endpoint's weighted routes as services take them (``[{deployment, adapter?, weight?}]``): checked and
resolved to rows locked against deletion, then written in place of the endpoint's routes. Shared by the
services that set routes: creating an endpoint, setting its routes (endpoints.py), and making an endpoint
plain again (composite.configure_endpoint, in a module endpoints.py imports, hence a module of its own)."""

from __future__ import annotations

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.errors import Invalid
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute
from serving.services.route_kinds import MAX_ROUTES, require_one_kind

Resolved = list[tuple[Deployment, DeploymentAdapter | None, int]]


def resolve_routes(actor: Actor, team: Team, routes: list[dict]) -> Resolved:
    """Each route's deployment (of ``team``, visible to ``actor``), adapter and weight; refused whole."""
    if not routes:
        raise Invalid("routes: an endpoint needs at least one route.")
    if len(routes) > MAX_ROUTES:  # each is read here and on every rebuild of the gateway's routing table
        raise Invalid(f"routes: at most {MAX_ROUTES} routes.")
    resolved = []
    listed: dict[tuple[int, int | None], int] = {}
    for index, route in enumerate(routes):
        # Locked as it is read (as scale and delete lock it, but letting other reads and references by): not
        # deleted, nor its adapter removed, before the route to it commits; one deleted meanwhile is not found.
        deployment = (
            Deployment.objects.visible_to(actor)
            .select_for_update(no_key=True, of=("self",))
            .filter(name=route.get("deployment"))
            .first()
        )
        if deployment is None:
            raise Invalid(
                f"routes[{index}].deployment: no deployment {route.get('deployment')!r} visible to you."
            )
        if deployment.owner_team_id != team.pk:
            raise Invalid(f"routes[{index}]: an endpoint routes to its own team's deployments only.")
        adapter = None
        if route.get("adapter"):
            adapter = deployment.adapters.filter(name=route["adapter"]).first()
            if adapter is None:
                raise Invalid(
                    f"routes[{index}].adapter: {deployment.name} serves no adapter {route['adapter']!r}."
                )
        # Rollouts key routes by target: a second row of one would take the canary's share, or keep its traffic.
        first = listed.setdefault((deployment.pk, adapter.pk if adapter else None), index)
        if first != index:
            raise Invalid(
                f"routes[{index}]: {deployment.name}{'/' + adapter.name if adapter else ''} is listed already "
                f"(routes[{first}]); list each target once, with its weights added up."
            )
        weight = route.get("weight", 100)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 10_000:
            raise Invalid(f"routes[{index}].weight: a whole number 0..10000.")
        resolved.append((deployment, adapter, weight))
    if not any(weight for _, _, weight in resolved):
        raise Invalid("routes: at least one route needs a weight above 0.")
    require_one_kind(deployment for deployment, _, _ in resolved)
    return resolved


def write_routes(endpoint: Endpoint, resolved: Resolved) -> None:
    """``resolved`` in place of the endpoint's routes (the caller audits the change)."""
    endpoint.routes.all().delete()
    for deployment, adapter, weight in resolved:
        EndpointRoute.objects.create(endpoint=endpoint, deployment=deployment, adapter=adapter, weight=weight)
