"""REST for endpoints: plain ones (weighted routes, a fallback), composite ones (router, cascade, vote:
their kind and config) and their shares with other teams, departments or the organisation.

Operation ids stay what they were before this module was split out of api.py (``serving_api_*``):
generated clients name their methods by them.
"""

from datetime import datetime
from typing import Any, Literal

from django.db.models import Prefetch
from ninja import Query, Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Department, Team
from portfolio.errors import NotFound
from serving import services
from serving.models import Endpoint, EndpointRoute
from serving.services.endpoints import MAX_DESCRIPTION, MAX_ROUTES

router = Router(tags=["serving"])


class RouteIn(Schema):
    deployment: str
    adapter: str | None = None
    weight: int = 100


class EndpointOut(Schema):
    id: int
    name: str
    owner_team_id: int
    description: str
    fallback: str | None = Field(None, alias="fallback.name")
    routes: list[dict[str, Any]]
    max_n: int = Field(description="Most completions per prompt (n, best_of) one request may ask for")
    sticky_by: str = Field(description="none (random by weight), api_key or header")
    sticky_header: str = Field(description="With sticky_by=header: the header whose value picks the variant")
    kind: str = Field(description="plain (weighted routes), router, cascade or vote")
    config: dict[str, Any] = Field(description="A router's, cascade's or vote's settings (empty when plain)")

    @staticmethod
    def resolve_routes(obj) -> list[dict[str, Any]]:
        # A page's routes come in one query (``list_endpoints``), not one per endpoint (found by review).
        prefetched = "routes" in getattr(obj, "_prefetched_objects_cache", {})
        return obj.route_list(list(obj.routes.all()) if prefetched else None)


CONFIG_HELP = (
    "router: {classifier, routes: {label: endpoint} (at most 32), default, system?, max_tokens? (1-16)}; "
    "cascade: {small, large, threshold (mean token log-probability, -20..0) or confidence: verifier with "
    "verifier and verifier_prompt?, large_template? ({input}) and large_stop? for a large base model}; "
    "vote: {endpoint, n (2-16), method? (majority | best_of_n | verifier), verifier?, temperature? (0-2)}. "
    "Every endpoint named is a plain endpoint of the same team."
)


class EndpointIn(Schema):
    name: str
    team_id: int
    description: str = Field("", max_length=MAX_DESCRIPTION)
    routes: list[RouteIn] = Field([], max_length=MAX_ROUTES, description="A plain endpoint's weighted routes")
    fallback: str | None = None
    max_n: int = Field(
        8, ge=1, le=128, description="Most completions per prompt (n, best_of) one request may ask for"
    )
    kind: Literal["plain", "router", "cascade", "vote"] = "plain"
    config: dict[str, Any] = Field({}, description=CONFIG_HELP)


class ConfigIn(Schema):
    kind: Literal["plain", "router", "cascade", "vote"]
    config: dict[str, Any] = Field({}, description=CONFIG_HELP)
    routes: list[RouteIn] | None = Field(
        None,
        max_length=MAX_ROUTES,
        description="With kind plain: its weighted routes, in place of any it has; omitted: the routes it "
        "kept from before it was made composite (an endpoint created composite has none)",
    )


class RoutesIn(Schema):
    routes: list[RouteIn] = Field(..., max_length=MAX_ROUTES, description="The weighted routes")
    fallback: str | None = None
    max_n: int | None = Field(
        None, ge=1, le=128, description="Completions cap per prompt; omitted: unchanged"
    )
    sticky_by: Literal["none", "api_key", "header"] | None = Field(
        None, description="Sticky A/B: none (random by weight), api_key or header; omitted: unchanged"
    )
    sticky_header: str | None = Field(None, max_length=64, description="With sticky_by=header: its name")


MAX_ROW_ID = 2**31 - 1  # a database id: anything larger names nothing


class ShareTarget(Schema):
    """Exactly one of a team, a department or the whole organisation."""

    team_id: int | None = Field(None, ge=1, le=MAX_ROW_ID, description="A team of the organisation")
    department_id: int | None = Field(None, ge=1, le=MAX_ROW_ID, description="Every team of a department")
    organisation: bool = Field(False, description="Every team of the organisation")


class ShareOut(Schema):
    id: int
    kind: str = Field(description="team, department or organisation")
    target: str = Field(description="team:<slug>, department:<cost center> or organisation")
    team_id: int | None
    department_id: int | None
    organisation: bool
    created_at: datetime
    created_by: str | None = Field(None, alias="created_by.username")


# --- Endpoints -------------------------------------------------------------------------------------
def _fallback(request, name: str | None) -> Endpoint | None:
    return gate.get_visible(request.auth, Endpoint, name=name) if name else None


@router.get("/endpoints", response=list[EndpointOut], operation_id="serving_api_list_endpoints")
@paginate(PageNumberPagination, page_size=50)
def list_endpoints(request):
    routes = Prefetch("routes", EndpointRoute.objects.select_related("deployment", "adapter"))
    return (
        gate.visible(request.auth, Endpoint)
        .select_related("fallback")
        .prefetch_related(routes)
        .order_by("name", "id")
    )


@router.post("/endpoints", response={201: EndpointOut}, operation_id="serving_api_create_endpoint")
def create_endpoint(request, payload: EndpointIn):
    team = gate.get_visible(request.auth, Team, pk=payload.team_id)
    endpoint = services.create_endpoint(
        actor=request.auth,
        name=payload.name,
        team=team,
        description=payload.description,
        routes=[r.dict() for r in payload.routes],
        fallback=_fallback(request, payload.fallback),
        max_n=payload.max_n,
        kind=payload.kind,
        config=payload.config,
    )
    return Status(201, endpoint)


@router.get("/endpoints/{endpoint}", response=EndpointOut, operation_id="serving_api_get_endpoint")
def get_endpoint(request, endpoint: str):
    return gate.get_visible(request.auth, Endpoint, name=endpoint)


@router.put("/endpoints/{endpoint}/routes", response=EndpointOut, operation_id="serving_api_set_routes")
def set_routes(request, endpoint: str, payload: RoutesIn):
    """Change weights (canary, A/B) and the fallback; audited with before and after."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    return services.set_routes(
        actor=request.auth,
        endpoint=target,
        routes=[r.dict() for r in payload.routes],
        fallback=_fallback(request, payload.fallback),
        max_n=payload.max_n,
        sticky_by=payload.sticky_by,
        sticky_header=payload.sticky_header,
    )


@router.put(
    "/endpoints/{endpoint}/config", response=EndpointOut, operation_id="serving_api_configure_endpoint"
)
def configure_endpoint(request, endpoint: str, payload: ConfigIn):
    """Make the endpoint a router, cascade or vote (or plain again, with ``routes``, or those it kept);
    audited with before and after."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    return services.configure_endpoint(
        actor=request.auth,
        endpoint=target,
        kind=payload.kind,
        config=payload.config,
        routes=None if payload.routes is None else [r.dict() for r in payload.routes],
    )


@router.delete("/endpoints/{endpoint}", response={204: None}, operation_id="serving_api_delete_endpoint")
def delete_endpoint(request, endpoint: str):
    services.delete_endpoint(
        actor=request.auth, endpoint=gate.get_visible(request.auth, Endpoint, name=endpoint)
    )
    return Status(204, None)


# --- Endpoint shares -------------------------------------------------------------------------------
def _share_target(target: ShareTarget) -> dict[str, Any]:
    """Teams and departments are the organisation's: any that exists may be named (the service refuses
    the owning team and anything but exactly one target)."""
    found: dict[str, Any] = {"organisation": target.organisation}
    if target.team_id is not None:
        found["team"] = Team.objects.filter(pk=target.team_id).first()
        if found["team"] is None:
            raise NotFound("Team not found.")
    if target.department_id is not None:
        found["department"] = Department.objects.filter(pk=target.department_id).first()
        if found["department"] is None:
            raise NotFound("Department not found.")
    return found


@router.get("/endpoints/{endpoint}/shares", response=list[ShareOut], operation_id="serving_api_list_shares")
@paginate(PageNumberPagination, page_size=50)
def list_shares(request, endpoint: str):
    """Who besides the owning team may call the endpoint; seen by whoever sees the endpoint."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    return target.shares.select_related("team", "department", "created_by").order_by(
        "-organisation", "department__name", "team__name", "id"
    )


@router.post(
    "/endpoints/{endpoint}/shares", response={201: ShareOut}, operation_id="serving_api_share_endpoint"
)
def share_endpoint(request, endpoint: str, payload: ShareTarget):
    """Share with a team, a department or the organisation (``endpoint.share``: owners, admins); their
    keys may call it from the gateway's next routing refresh, each call charged to the caller's team."""
    target = gate.get_visible(request.auth, Endpoint, name=endpoint)
    gate.require(request.auth, "endpoint.share", target)
    share = services.share_endpoint(actor=request.auth, endpoint=target, **_share_target(payload))
    return Status(201, share)


@router.delete(
    "/endpoints/{endpoint}/shares", response={204: None}, operation_id="serving_api_unshare_endpoint"
)
def unshare_endpoint(request, endpoint: str, target: Query[ShareTarget]):
    """Withdraw one share, named by the same query as it was made (``?team_id=``, ``?department_id=`` or
    ``?organisation=true``)."""
    found = gate.get_visible(request.auth, Endpoint, name=endpoint)
    gate.require(request.auth, "endpoint.share", found)
    services.unshare_endpoint(actor=request.auth, endpoint=found, **_share_target(target))
    return Status(204, None)
