"""Endpoints: the stable names clients call, each with its weighted routes to deployments or adapters
(canary, A/B) and a fallback endpoint; the list, the new-endpoint form, an endpoint's route editor, and
whom its owners share it with."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import buttons, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Team
from portfolio.billing import costs
from portfolio.formviews import submit
from serving import services
from serving.cascade_savings import cascade_savings
from serving.forms.base import apply_serving_error, managed_teams
from serving.forms.endpoints import CompositeForm, EndpointForm, FallbackForm, ShareForm, route_formset
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Replica
from serving.views.display import percent
from serving.views.rollouts import rollout_context


def _with_shares(routes: list[EndpointRoute]) -> list[EndpointRoute]:
    total = sum(route.weight for route in routes)
    for route in routes:
        route.share = percent(route.weight, total)
        route.share_exact = f"{100 * route.weight / total:.1f}" if total else "0"
    return routes


def _route_deployments(actor: Actor, teams) -> list[Deployment]:
    """Deployments an endpoint of one of ``teams`` may route to, with their adapters."""
    return list(
        gate.visible(actor, Deployment)
        .filter(owner_team__in=teams)
        .select_related("owner_team")
        .prefetch_related(Prefetch("adapters", queryset=DeploymentAdapter.objects.order_by("name")))
        .order_by("name", "id")
    )


def _managed(request, name: str) -> tuple[Actor, Endpoint]:
    actor = actor_of(request)
    endpoint = gate.get_visible(actor, Endpoint, name=name)
    gate.require(actor, "deployment.manage", endpoint)
    return actor, endpoint


def _as_stored(actor: Actor, endpoint: Endpoint) -> Endpoint:
    """The endpoint read again for the page shown after a refusal: 404 when deleted meanwhile."""
    return gate.get_visible(actor, Endpoint, pk=endpoint.pk)


@require_GET
def endpoint_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows their teams' endpoints (all to org-wide roles)."""
    actor = actor_of(request)
    endpoints = (
        gate.visible(actor, Endpoint)
        .select_related("owner_team", "fallback")
        .prefetch_related(
            Prefetch(
                "routes",
                queryset=EndpointRoute.objects.select_related("deployment", "adapter").order_by(
                    "-weight", "id"
                ),
            )
        )
        .order_by("name", "id")
    )
    page = listing.paginate(request, endpoints)
    page.object_list = list(page.object_list)
    for endpoint in page.object_list:
        endpoint.route_rows = _with_shares(list(endpoint.routes.all()))
    return render(
        request,
        "serving/endpoint_list.html",
        {"page": page, "can_create": gate.can(actor, "deployment.manage")},
    )


@require_http_methods(["GET", "POST"])
def endpoint_create(request):
    """Permission: ``deployment.manage`` in some team, and in the team chosen (not visible: 404, visible
    but not allowed: 403). Routes go to that team's deployments only."""
    actor = actor_of(request)
    gate.require(actor, "deployment.manage")
    if request.method == "POST" and request.POST.get("team"):
        team = gate.get_visible(actor, Team, pk=request.POST["team"])
        gate.require(actor, "deployment.manage", team)
    data = request.POST if request.method == "POST" else None
    form = EndpointForm(data, actor=actor)
    deployments = _route_deployments(actor, managed_teams(actor))
    initial = (
        [{"deployment": request.GET["deployment"], "weight": 100}] if request.GET.get("deployment") else None
    )
    routes = route_formset(data, deployments=deployments, initial=initial)

    def create() -> Endpoint:
        return services.create_endpoint(
            actor=actor,
            name=form.cleaned_data["name"],
            team=form.cleaned_data["team"],
            description=form.cleaned_data["description"],
            routes=routes.routes(),
            fallback=form.cleaned_data["fallback"],
            max_n=form.cleaned_data["max_n"] or services.MAX_N_DEFAULT,
        )

    if data is not None and form.is_valid() and routes.is_valid():
        created = submit(
            request,
            form,
            create,
            success=lambda endpoint: (
                f"Endpoint {endpoint.name} created: clients call it with \u201cmodel\u201d: \u201c{endpoint.name}\u201d."
            ),
            then=lambda endpoint: redirect("endpoint-detail", name=endpoint.name),
            refused=apply_serving_error,
        )
        if created is not None:
            return created
    return render(request, "serving/endpoint_form.html", {"form": form, "routes": routes})


def _composite(endpoint: Endpoint) -> dict:
    """What the page shows of a router, cascade or vote: its settings, and a cascade's savings this month."""
    if endpoint.kind == "plain":
        return {}
    config = endpoint.config or {}
    names = {config.get(k) for k in ("classifier", "default", "small", "large", "endpoint")}
    names.update((config.get("routes") or {}).values())
    context: dict = {"composite_config": config, "composite_hops": sorted(n for n in names if n)}
    if endpoint.kind == "cascade":
        month = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        context["savings"] = cascade_savings(endpoint, month)
    return context


def _endpoint_page(
    request,
    actor: Actor,
    endpoint: Endpoint,
    *,
    routes_form=None,
    fallback_form=None,
    share_form=None,
    composite_form=None,
):
    current = _with_shares(
        list(
            endpoint.routes.select_related("deployment", "adapter")
            .annotate(
                ready_count=Count(
                    "deployment__replica_set", filter=Replica.serving("deployment__replica_set__")
                )
            )
            .order_by("-weight", "id")
        )
    )
    can_manage = gate.can(actor, "deployment.manage", endpoint)
    if can_manage and routes_form is None:
        initial = [
            {
                "deployment": r.deployment.name,
                "adapter": r.adapter.name if r.adapter else "",
                "weight": r.weight,
            }
            for r in current
        ]
        routes_form = route_formset(
            deployments=_route_deployments(actor, [endpoint.owner_team]), initial=initial
        )
        fallback_form = FallbackForm(actor=actor, endpoint=endpoint)
    if can_manage and composite_form is None:
        composite_form = CompositeForm(endpoint=endpoint)
    can_share = gate.can(actor, "endpoint.share", endpoint)
    if can_share and share_form is None:
        share_form = ShareForm(endpoint=endpoint)
    fallback_visible = (
        bool(endpoint.fallback_id) and gate.visible(actor, Endpoint).filter(pk=endpoint.fallback_id).exists()
    )
    return render(
        request,
        "serving/endpoint_detail.html",
        {
            "endpoint": endpoint,
            "current_routes": current,
            "can_manage": can_manage,
            "routes": routes_form,
            "fallback_form": fallback_form,
            "fallback_visible": fallback_visible,
            "shares": endpoint.shares.select_related("team__department", "department").order_by(
                "-organisation", "department__name", "team__name", "id"
            ),
            "can_share": can_share,
            "share_form": share_form,
            "gateway_url": request.build_absolute_uri("/v1/chat/completions"),
            "cost": costs.endpoint_this_month(endpoint.pk),
            "currency": settings.BILLING_CURRENCY,
            "composite_form": composite_form,
            **_composite(endpoint),
            **rollout_context(actor, endpoint, can_manage, current),
        },
    )


@require_GET
def endpoint_detail(request, name: str):
    """Permission: the endpoint is visible (``gate.get_visible``), else 404; the route editor is shown to
    ``deployment.manage`` only."""
    actor = actor_of(request)
    return _endpoint_page(request, actor, gate.get_visible(actor, Endpoint, name=name))


@require_POST
def endpoint_routes(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (owner or engineer, else 403). Replaces the
    routes and the fallback at once; audited with before and after."""
    actor, endpoint = _managed(request, name)
    routes = route_formset(request.POST, deployments=_route_deployments(actor, [endpoint.owner_team]))
    fallback_form = FallbackForm(request.POST, actor=actor, endpoint=endpoint)
    if routes.is_valid():
        saved = submit(
            request,
            fallback_form,
            lambda: services.set_routes(
                actor=actor,
                endpoint=endpoint,
                routes=routes.routes(),
                fallback=fallback_form.cleaned_data["fallback"],
                max_n=fallback_form.cleaned_data["max_n"],
                sticky_by=fallback_form.cleaned_data["sticky_by"] or None,
                sticky_header=fallback_form.cleaned_data["sticky_header"],
            ),
            success=f"Routes of {endpoint.name} saved.",
            then=lambda _: redirect("endpoint-detail", name=endpoint.name),
            refused=apply_serving_error,
        )
        if saved is not None:
            return saved
    endpoint = _as_stored(actor, endpoint)
    return _endpoint_page(request, actor, endpoint, routes_form=routes, fallback_form=fallback_form)


@require_POST
def endpoint_config(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Makes the endpoint a router,
    cascade or vote (or plain again); audited with before and after."""
    actor, endpoint = _managed(request, name)
    form = CompositeForm(request.POST, endpoint=endpoint)
    saved = submit(
        request,
        form,
        lambda: services.configure_endpoint(
            actor=actor,
            endpoint=endpoint,
            kind=form.cleaned_data["kind"],
            config=form.cleaned_data["config"] or {},
            routes=form.cleaned_data.get("routes"),
        ),
        success=f"{endpoint.name} configured.",
        then=lambda _: redirect("endpoint-detail", name=endpoint.name),
    )
    if saved is not None:
        return saved
    endpoint = _as_stored(actor, endpoint)
    return _endpoint_page(request, actor, endpoint, composite_form=form)


@require_POST
def endpoint_delete(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Clients calling it are refused
    from then on. Refused while in use (a fallback, a hop, a judge, a canary, a task's production endpoint)."""
    actor, endpoint = _managed(request, name)
    return buttons.press(
        request,
        lambda: services.delete_endpoint(actor=actor, endpoint=endpoint),
        success=f"Endpoint {endpoint.name} deleted.",
        back=reverse("endpoint-detail", kwargs={"name": endpoint.name}),
        then="endpoint-list",
    )


def _sharer(request, name: str) -> tuple[Actor, Endpoint]:
    actor = actor_of(request)
    endpoint = gate.get_visible(actor, Endpoint, name=name)
    gate.require(actor, "endpoint.share", endpoint)
    return actor, endpoint


@require_POST
def endpoint_share(request, name: str):
    """Permission: visible (else 404) and ``endpoint.share`` (owners and admins, else 403). Shares with one
    team, department or the organisation; audited with the endpoint's shares before and after."""
    actor, endpoint = _sharer(request, name)
    form = ShareForm(request.POST, endpoint=endpoint)
    saved = submit(
        request,
        form,
        lambda: services.share_endpoint(actor=actor, endpoint=endpoint, **form.targets()),
        success=lambda share: f"{endpoint.name} shared with {share.label}.",
        then=lambda _: redirect("endpoint-detail", name=endpoint.name),
        fields={"team": "target", "department": "target"},
    )
    if saved is not None:
        return saved
    return _endpoint_page(request, actor, endpoint, share_form=form)


@require_POST
def endpoint_unshare(request, name: str, share_id: int):
    """Permission: visible (else 404) and ``endpoint.share`` (else 403). Withdraws one share: those callers
    are refused from the gateway's next refresh."""
    actor, endpoint = _sharer(request, name)
    share = get_object_or_404(endpoint.shares.select_related("team", "department"), pk=share_id)
    return buttons.press(
        request,
        lambda: services.unshare_endpoint(
            actor=actor,
            endpoint=endpoint,
            team=share.team,
            department=share.department,
            organisation=share.organisation,
        ),
        success=f"{endpoint.name} is no longer shared with {share.label}.",
        back=reverse("endpoint-detail", kwargs={"name": endpoint.name}),
    )
