"""Web pages of serving: compute pools and their nodes' capacity, deployments with their replicas, timeline,
engine logs, adapters and a prompt box, and endpoints with their weighted routes.

Every view decides access with the gate: lists start from ``gate.visible``, an object the actor may not
see answers 404 (``gate.get_visible``), a change needs its capability (``gate.require``), else 403; the
docstrings say which. Changes go through ``serving.services``; a ``DomainError`` becomes a form error or
a message, while ``NotFound`` and ``Forbidden`` propagate to Django's 404 and 403 pages.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.errors import Conflict, DomainError, Invalid
from serving import engine_args, playground, services
from serving.capacity import pool_usage
from serving.choices import DeploymentStatus, DesiredState, NodeState, ReplicaState
from serving.forms import (
    AdapterAddForm,
    DeploymentForm,
    EndpointForm,
    FallbackForm,
    NodeStateForm,
    PoolCreateForm,
    ScaleForm,
    TryForm,
    UpdateVersionForm,
    apply_serving_error,
    managed_teams,
    route_formset,
)
from serving.models import ComputePool, Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Node, Replica

PAGE_SIZE = 50
TIMELINE_LENGTH = 50
POOLS_POLL_SECONDS = 5
DEPLOYMENT_POLL_SECONDS = 3
GIB = 1024**3
GET_POST = require_http_methods(["GET", "POST"])
# Replica states on the way somewhere: the deployment page keeps polling while any replica is in one.
SETTLING_STATES = frozenset(
    {ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.BACKOFF, ReplicaState.STOPPING}
)
# How the timeline colours an event, by kind (serving.services, reconcile and the node agents write them).
EVENT_TONES = {
    "ready": "ok",
    "started": "ok",
    "adapter_loaded": "ok",
    "created": "info",
    "scheduled": "info",
    "scaled": "info",
    "rollout": "info",
    "adapter_added": "info",
    "adopt": "info",
    "crashed": "warn",
    "unhealthy": "warn",
    "failed": "danger",
    "unschedulable": "danger",
    "replica_lost": "danger",
    "adapter_failed": "danger",
}
NODE_ACTIONS = {
    NodeState.CORDONED: ("Cordon", "No new replicas are placed on {node}; running ones stay."),
    NodeState.DRAINING: (
        "Drain",
        "Replicas on {node} move to other nodes, each once its replacement is ready.",
    ),
    NodeState.READY: ("Make ready", "{node} takes new replicas again."),
}


# --- Helpers ---------------------------------------------------------------------------------------
def _percent(used: int, total: int) -> int:
    if total <= 0:
        return 0
    return max(0, min(100, round(100 * used / total)))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def age_label(seconds: float | None) -> str:
    """How long ago, as people read it at a glance: "4 s", "3 min", "2 h", "5 d"."""
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _bar(label: str, used_text: str, used: int, total: int) -> dict:
    percent = _percent(used, total)
    level = "high" if percent >= 90 else "mid" if percent >= 70 else "low"
    return {"label": label, "text": used_text, "percent": percent, "level": level}


def _url(url_name: str, **kwargs) -> str:
    """A page's address, or "" where that page is not installed (the registry's, say)."""
    try:
        return reverse(url_name, kwargs=kwargs or None)
    except NoReverseMatch:
        return ""


def _version_url(version) -> str:
    return _url("version-detail", name=version.model.name, number=version.number)


def _rate(value: Decimal) -> str:
    """A price as written: 1.2500 -> "1.25", 0.0000 -> "0"."""
    return f"{value.normalize():f}"


def _arg_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value in ("", None) else str(value)


def _done(request, message: str, target: str, **kwargs):
    messages.success(request, message)
    return redirect(target, **kwargs)


def _refused(request, exc: DomainError, target: str, **kwargs):
    """A refusal a person can act on, shown as a message; access refusals propagate (404/403)."""
    if not isinstance(exc, Invalid | Conflict):
        raise exc
    messages.error(request, exc.message)
    return redirect(target, **kwargs)


# --- Pools and nodes -------------------------------------------------------------------------------
def _node_rows(pool: ComputePool, now) -> list[dict]:
    usage = pool_usage(pool)
    stale_after = settings.NODE_HEARTBEAT_SECONDS * 2
    rows = []
    for node in pool.nodes.all():
        use = usage[node.name]
        age = (now - node.heartbeat_at).total_seconds() if node.heartbeat_at else None
        bars = [
            _bar(
                "RAM",
                f"{_gib(use['ram_used'])} / {_gib(use['ram_total'])} GiB",
                use["ram_used"],
                use["ram_total"],
            ),
            _bar(
                "Cores", f"{use['cores_used']} / {use['cores_total']}", use["cores_used"], use["cores_total"]
            ),
        ]
        for gpu in use["gpus"]:
            bars.append(
                _bar(
                    f"GPU {gpu['index']}",
                    f"{_gib(gpu['used'])} / {_gib(gpu['total'])} GiB",
                    gpu["used"],
                    gpu["total"],
                )
                | {"title": gpu["name"]}
            )
        actions = [
            {
                "state": state,
                "label": NODE_ACTIONS[state][0],
                "help": NODE_ACTIONS[state][1].format(node=node.name),
            }
            for state in (NodeState.CORDONED, NodeState.DRAINING, NodeState.READY)
            if node.state not in (state, NodeState.LOST)
        ]
        rows.append(
            {
                "node": node,
                "bars": bars,
                "age": age_label(age),
                "stale": age is None or age > stale_after,
                "replica_count": node.replica_count,
                "actions": actions,
            }
        )
    return rows


def _pools_response(request, actor: Actor, *, notice: str = "", error: str = ""):
    """The pools page, or only its pools section for htmx (the 5 s refresh and node changes)."""
    nodes = Node.objects.order_by("name").annotate(
        replica_count=Count("replicas", filter=Q(replicas__state__in=ReplicaState.active()))
    )
    pools = list(
        gate.visible(actor, ComputePool)
        .prefetch_related(
            Prefetch("allowed_teams", queryset=Team.objects.order_by("name")),
            Prefetch("nodes", queryset=nodes),
        )
        .order_by("name", "id")
    )
    now = timezone.now()
    for pool in pools:
        pool.node_rows = _node_rows(pool, now)
        pool.gpu_rate, pool.cpu_rate = _rate(pool.gpu_hour_rate), _rate(pool.cpu_core_hour_rate)
    context = {
        "pools": pools,
        "can_manage": gate.can(actor, "pool.manage"),
        "poll_seconds": POOLS_POLL_SECONDS,
        "notice": notice,
        "error": error,
        "node_pool_setting": settings.NODE_POOL,
    }
    template = "serving/partials/pools.html" if wants_fragment(request) else "serving/pool_list.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def pool_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows the pools open to their teams (all pools to
    org-wide roles). htmx gets the pools section, which refreshes itself every 5 s."""
    return _pools_response(request, actor_of(request))


@GET_POST
def pool_create(request):
    """Permission: ``pool.manage`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "pool.manage")
    form = PoolCreateForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            pool = services.create_pool(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_serving_error(form, exc)
        else:
            return _done(
                request,
                f"Pool {pool.name} created. Machines join it when their node agent starts with "
                f"PORTFOLIO_NODE_POOL={pool.name}.",
                "pool-list",
            )
    return render(request, "serving/pool_form.html", {"form": form})


@require_POST
def node_state(request, name: str):
    """Permission: the node's pool is visible (else 404) and ``pool.manage`` (platform admin, else 403)."""
    actor = actor_of(request)
    node = gate.get_visible(actor, Node, name=name)
    gate.require(actor, "pool.manage")
    form = NodeStateForm(request.POST)
    notice = error = ""
    if not form.is_valid():
        error = "Choose ready, cordoned or draining."
    else:
        try:
            node = services.set_node_state(actor=actor, node=node, state=form.cleaned_data["state"])
        except (Invalid, Conflict) as exc:
            error = exc.message
        else:
            notice = f"{node.name} is now {node.get_state_display().lower()}."
    if wants_fragment(request):
        return _pools_response(request, actor, notice=notice, error=error)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, notice)
    return redirect("pool-list")


# --- Deployments -----------------------------------------------------------------------------------
def _deployment(actor: Actor, name: str) -> Deployment:
    """A visible deployment, else 404."""
    return gate.get_visible(actor, Deployment, name=name)


@require_GET
def deployment_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows their teams' deployments (all to org-wide roles)."""
    actor = actor_of(request)
    deployments = (
        gate.visible(actor, Deployment)
        .select_related("owner_team", "version__model", "pool")
        .annotate(
            ready_count=Count(
                "replica_set",
                filter=Q(replica_set__state=ReplicaState.READY, replica_set__desired=DesiredState.RUNNING),
            )
        )
        .order_by("name", "id")
    )
    page = Paginator(deployments, PAGE_SIZE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    for deployment in page.object_list:
        deployment.version_url = _version_url(deployment.version)
    return render(
        request,
        "serving/deployment_list.html",
        {"page": page, "can_create": gate.can(actor, "deployment.manage")},
    )


@GET_POST
def deployment_create(request):
    """Permission: ``deployment.manage`` in some team (owner or engineer), and in the team chosen: a team
    the actor may not see answers 404, one they may see but not deploy in 403. A deployment that could
    not get even one replica now is refused with the scheduler's reason, and nothing is created."""
    actor = actor_of(request)
    gate.require(actor, "deployment.manage")
    if request.method == "POST":
        if request.POST.get("team"):
            team = gate.get_visible(actor, Team, pk=request.POST["team"])
            gate.require(actor, "deployment.manage", team)
        form = DeploymentForm(request.POST, actor=actor)
    else:
        initial = {key: request.GET[key] for key in ("version", "pool", "team") if request.GET.get(key)}
        form = DeploymentForm(initial=initial, actor=actor)
    refusal = ""
    if form.is_valid():
        data = form.cleaned_data
        try:
            deployment = services.create_deployment(
                actor=actor,
                name=data["name"],
                team=data["team"],
                version=data["version"],
                pool=data["pool"],
                replicas=data["replicas"],
                args=form.engine_args(data["pool"].kind),
                store_prompts=data["store_prompts"],
            )
        except DomainError as exc:
            if exc.code == "unschedulable":
                refusal = exc.message
            else:
                apply_serving_error(form, exc)
        else:
            return _done(
                request,
                f"Deployment {deployment.name} created; its replicas start below.",
                "deployment-detail",
                name=deployment.name,
            )
    return render(
        request,
        "serving/deployment_form.html",
        {"form": form, "refusal": refusal, "engine_fields": form.engine_fields(form.pool_kind())},
    )


def _settling(deployment: Deployment, replicas: list[Replica]) -> bool:
    """Whether the deployment is on its way somewhere (the page polls) or stable (it stops polling)."""
    if deployment.status == DeploymentStatus.PENDING:
        return True
    live = [r for r in replicas if r.desired == DesiredState.RUNNING]
    if any(r.state in SETTLING_STATES for r in replicas):
        return True
    if any(r.desired == DesiredState.STOPPED and r.state != ReplicaState.STOPPED for r in replicas):
        return True  # scaled down or replaced: waiting for the agent to stop it
    if any(r.generation != deployment.generation for r in live):
        return True  # a rolling restart or update in progress
    current = sum(r.generation == deployment.generation for r in live)
    # A change not yet picked up by the reconcile; unless the scheduler already said it cannot place it.
    return current != deployment.replicas and not deployment.status_detail.startswith("Cannot place")


def _live_context(actor: Actor, deployment: Deployment) -> dict:
    """What the polled parts of the deployment page show: status, replicas, engine logs, timeline."""
    replicas = list(deployment.replica_set.select_related("node").order_by("id"))
    now = timezone.now()
    for replica in replicas:
        replica.health_age = (
            age_label((now - replica.last_health_at).total_seconds()) if replica.last_health_at else ""
        )
        replica.is_old = replica.generation != deployment.generation
    ready = sum(r.state == ReplicaState.READY and r.desired == DesiredState.RUNNING for r in replicas)
    events = list(deployment.events.order_by("-at", "-id")[:TIMELINE_LENGTH])
    for event in events:
        event.tone = EVENT_TONES.get(event.kind, "muted")
    return {
        "deployment": deployment,
        "replicas": replicas,
        "ready_count": ready,
        "events": events,
        "polling": _settling(deployment, replicas),
        "poll_seconds": DEPLOYMENT_POLL_SECONDS,
        # Engine logs can carry prompts and paths: only for those who run the deployment.
        "can_see_logs": gate.can(actor, "deployment.manage", deployment),
    }


def _deployment_page(request, actor: Actor, deployment: Deployment, *, status: int = 200, **extra):
    """The deployment page, or only its live parts for the htmx poll."""
    context = _live_context(actor, deployment)
    if wants_fragment(request):
        response = render(request, "serving/partials/deployment_live.html", context)
        patch_vary_headers(response, ["HX-Request"])
        return response
    can_manage = gate.can(actor, "deployment.manage", deployment)
    can_call = gate.can(actor, "endpoint.call", deployment)
    adapters = list(deployment.adapters.select_related("version__model").order_by("name"))
    for adapter in adapters:
        adapter.version_url = _version_url(adapter.version)
    try:
        resolved_args = engine_args.validate(deployment.engine_args, deployment.pool.kind)
    except Invalid:
        resolved_args = deployment.engine_args
    routes = (
        EndpointRoute.objects.filter(deployment=deployment, endpoint__in=gate.visible(actor, Endpoint))
        .select_related("endpoint", "adapter")
        .order_by("endpoint__name", "id")
    )
    context |= {
        "version_url": _version_url(deployment.version),
        "registry_url": _url("model-list"),
        "adapters": adapters,
        "engine_args": [
            {"name": name, "value": _arg_value(value), "custom": name in deployment.engine_args}
            for name, value in resolved_args.items()
        ],
        "routes": routes,
        "can_manage": can_manage,
        "can_call": can_call,
        "can_delete": deployment.replicas == 0 and not context["replicas"],
        "scale_form": ScaleForm(initial={"replicas": deployment.replicas or 1}),
        "update_form": UpdateVersionForm(actor=actor, deployment=deployment) if can_manage else None,
        "adapter_form": AdapterAddForm(actor=actor, deployment=deployment) if can_manage else None,
        "try_form": TryForm(deployment=deployment, adapter_names=[a.name for a in adapters])
        if can_call
        else None,
        "try_result": None,
        "try_error": "",
    }
    context |= extra
    response = render(request, "serving/deployment_detail.html", context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def deployment_detail(request, name: str):
    """Permission: the deployment is visible (``gate.get_visible``), else 404. The engine log is shown to
    ``deployment.manage`` only. htmx gets the live parts, polled every 3 s while the deployment settles."""
    actor = actor_of(request)
    return _deployment_page(request, actor, _deployment(actor, name))


def _managed(request, name: str) -> tuple[Actor, Deployment]:
    actor = actor_of(request)
    deployment = _deployment(actor, name)
    gate.require(actor, "deployment.manage", deployment)
    return actor, deployment


@require_POST
def deployment_scale(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (owner or engineer, else 403)."""
    actor, deployment = _managed(request, name)
    form = ScaleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Replicas: a whole number from 0 to 64.")
        return redirect("deployment-detail", name=deployment.name)
    replicas = form.cleaned_data["replicas"]
    try:
        services.scale(actor=actor, deployment=deployment, replicas=replicas)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(
        request,
        f"Scaling {deployment.name} to {replicas} replica(s).",
        "deployment-detail",
        name=deployment.name,
    )


@require_POST
def deployment_stop(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Scales to 0; the deployment
    and its adapters stay, ready to be scaled up again."""
    actor, deployment = _managed(request, name)
    try:
        services.scale(actor=actor, deployment=deployment, replicas=0)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(
        request,
        f"Stopping {deployment.name}: its replicas shut down and endpoints stop routing to it.",
        "deployment-detail",
        name=deployment.name,
    )


@require_POST
def deployment_restart(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). A rolling restart: each new
    replica is ready before an old one stops."""
    actor, deployment = _managed(request, name)
    try:
        deployment = services.restart(actor=actor, deployment=deployment)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(
        request,
        f"Rolling restart of {deployment.name} started (generation {deployment.generation}).",
        "deployment-detail",
        name=deployment.name,
    )


@require_POST
def deployment_update(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403); the new version must be visible
    too. A rolling update to another ready base version."""
    actor, deployment = _managed(request, name)
    form = UpdateVersionForm(request.POST, actor=actor, deployment=deployment)
    if not form.is_valid():
        messages.error(request, "Choose a ready base version you can see.")
        return redirect("deployment-detail", name=deployment.name)
    version = form.cleaned_data["version"]
    try:
        deployment = services.restart(actor=actor, deployment=deployment, version=version)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(
        request,
        f"Rolling {deployment.name} to {deployment.version.label}: old replicas serve until new ones are ready.",
        "deployment-detail",
        name=deployment.name,
    )


@require_POST
def deployment_delete(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Only a stopped deployment with
    no replicas left and no endpoint routing to it can be deleted."""
    actor, deployment = _managed(request, name)
    try:
        services.delete_deployment(actor=actor, deployment=deployment)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(request, f"Deployment {deployment.name} deleted.", "deployment-list")


@require_POST
def adapter_add(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403); the adapter version must be a
    visible, ready adapter of the deployment's base version."""
    actor, deployment = _managed(request, name)
    form = AdapterAddForm(request.POST, actor=actor, deployment=deployment)
    if not form.is_valid():
        problems = " ".join(error for errors in form.errors.values() for error in errors)
        messages.error(request, f"The adapter was not added: {problems}")
        return redirect("deployment-detail", name=deployment.name)
    enabled = engine_args.validate(deployment.engine_args, deployment.pool.kind)["enable_lora"]
    try:
        attached = services.add_adapter(
            actor=actor,
            deployment=deployment,
            adapter=form.cleaned_data["adapter"],
            name=form.cleaned_data["name"],
        )
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    how = (
        "running replicas load it without a restart"
        if enabled
        else "a rolling restart turns LoRA serving on first, then replicas load it"
    )
    return _done(request, f"Adapter {attached.name} added; {how}.", "deployment-detail", name=deployment.name)


@require_POST
def adapter_remove(request, name: str, adapter: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Refused while an endpoint
    routes to the adapter; an adapter the deployment does not serve is a message, as in the REST API."""
    actor, deployment = _managed(request, name)
    attached = (
        DeploymentAdapter.objects.select_related("deployment")
        .filter(deployment=deployment, name=adapter)
        .first()
    )
    if attached is None:
        # As the REST API answers: the deployment is there, it just serves no such adapter (any more).
        messages.error(request, f"{deployment.name} serves no adapter {adapter!r}.")
        return redirect("deployment-detail", name=deployment.name)
    try:
        services.remove_adapter(actor=actor, attached=attached)
    except DomainError as exc:
        return _refused(request, exc, "deployment-detail", name=deployment.name)
    return _done(
        request,
        f"Adapter {attached.name} removed; replicas unload it without a restart.",
        "deployment-detail",
        name=deployment.name,
    )


@require_POST
def deployment_try(request, name: str):
    """Permission: visible (else 404) and ``endpoint.call`` (owner, engineer or developer, else 403). One
    chat completion against a ready replica; the prompt and answer are shown, never stored."""
    actor = actor_of(request)
    deployment = _deployment(actor, name)
    gate.require(actor, "endpoint.call", deployment)
    adapter_names = list(deployment.adapters.order_by("name").values_list("name", flat=True))
    form = TryForm(request.POST, deployment=deployment, adapter_names=adapter_names)
    result, error = None, ""
    if form.is_valid():
        try:
            result = playground.try_prompt(
                actor=actor,
                deployment=deployment,
                prompt=form.cleaned_data["prompt"],
                model=form.cleaned_data["model"],
                max_tokens=form.cleaned_data["max_tokens"],
            )
        except (Invalid, Conflict) as exc:
            error = exc.message
    else:
        error = " ".join(f"{form[name].label}: {' '.join(errors)}" for name, errors in form.errors.items())
    if wants_fragment(request):
        response = render(
            request, "serving/partials/try_result.html", {"try_result": result, "try_error": error}
        )
        patch_vary_headers(response, ["HX-Request"])
        return response
    return _deployment_page(request, actor, deployment, try_form=form, try_result=result, try_error=error)


# --- Endpoints -------------------------------------------------------------------------------------
def _with_shares(routes: list[EndpointRoute]) -> list[EndpointRoute]:
    total = sum(route.weight for route in routes)
    for route in routes:
        route.share = _percent(route.weight, total)
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
    page = Paginator(endpoints, PAGE_SIZE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    for endpoint in page.object_list:
        endpoint.route_rows = _with_shares(list(endpoint.routes.all()))
    return render(
        request,
        "serving/endpoint_list.html",
        {"page": page, "can_create": gate.can(actor, "deployment.manage")},
    )


@GET_POST
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
    if data is not None and form.is_valid() and routes.is_valid():
        try:
            endpoint = services.create_endpoint(
                actor=actor,
                name=form.cleaned_data["name"],
                team=form.cleaned_data["team"],
                description=form.cleaned_data["description"],
                routes=routes.routes(),
                fallback=form.cleaned_data["fallback"],
            )
        except DomainError as exc:
            apply_serving_error(form, exc)
        else:
            return _done(
                request,
                f"Endpoint {endpoint.name} created: clients call it with \u201cmodel\u201d: \u201c{endpoint.name}\u201d.",
                "endpoint-detail",
                name=endpoint.name,
            )
    return render(request, "serving/endpoint_form.html", {"form": form, "routes": routes})


def _endpoint_page(request, actor: Actor, endpoint: Endpoint, *, routes_form=None, fallback_form=None):
    current = _with_shares(
        list(
            endpoint.routes.select_related("deployment", "adapter")
            .annotate(
                ready_count=Count(
                    "deployment__replica_set",
                    filter=Q(
                        deployment__replica_set__state=ReplicaState.READY,
                        deployment__replica_set__desired=DesiredState.RUNNING,
                    ),
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
            "gateway_url": request.build_absolute_uri("/v1/chat/completions"),
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
    actor = actor_of(request)
    endpoint = gate.get_visible(actor, Endpoint, name=name)
    gate.require(actor, "deployment.manage", endpoint)
    routes = route_formset(request.POST, deployments=_route_deployments(actor, [endpoint.owner_team]))
    fallback_form = FallbackForm(request.POST, actor=actor, endpoint=endpoint)
    if routes.is_valid() and fallback_form.is_valid():
        try:
            services.set_routes(
                actor=actor,
                endpoint=endpoint,
                routes=routes.routes(),
                fallback=fallback_form.cleaned_data["fallback"],
            )
        except DomainError as exc:
            apply_serving_error(fallback_form, exc)
        else:
            return _done(request, f"Routes of {endpoint.name} saved.", "endpoint-detail", name=endpoint.name)
    endpoint.refresh_from_db()
    return _endpoint_page(request, actor, endpoint, routes_form=routes, fallback_form=fallback_form)


@require_POST
def endpoint_delete(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Clients calling it are refused
    from then on; endpoints using it as their fallback lose it."""
    actor = actor_of(request)
    endpoint = gate.get_visible(actor, Endpoint, name=name)
    gate.require(actor, "deployment.manage", endpoint)
    try:
        services.delete_endpoint(actor=actor, endpoint=endpoint)
    except DomainError as exc:
        return _refused(request, exc, "endpoint-detail", name=endpoint.name)
    return _done(request, f"Endpoint {endpoint.name} deleted.", "endpoint-list")
