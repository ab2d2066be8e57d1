"""The deployments list, the new-deployment form, and a deployment's page: its replicas, timeline and
engine logs (polled while it settles), adapters, engine arguments, routes and the prompt box."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.billing import costs
from portfolio.errors import DomainError, Invalid
from portfolio.formviews import submit
from portfolio.templatetags.formatting import age_label
from serving import adapter_holding, engine_args, reconcile, scheduler, services
from serving.choices import DeploymentStatus, DesiredState, ReplicaState, UpdateStrategy
from serving.forms.base import apply_serving_error
from serving.forms.deployment_actions import AdapterAddForm, ScaleForm, TryForm, UpdateVersionForm
from serving.forms.deployments import DeploymentForm
from serving.models import Deployment, Endpoint, EndpointRoute, Replica
from serving.views.display import arg_value, url_or_blank, version_url

TIMELINE_LENGTH = 50
DEPLOYMENT_POLL_SECONDS = 3
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
    "update_strategy": "info",
    "crashed": "warn",
    "unhealthy": "warn",
    "failed": "danger",
    "unschedulable": "danger",
    "replica_lost": "danger",
    "adapter_failed": "danger",
}


def visible_deployment(actor: Actor, name: str) -> Deployment:
    """A visible deployment, else 404."""
    return gate.get_visible(actor, Deployment, name=name)


@require_GET
def deployment_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows their teams' deployments (all to org-wide roles)."""
    actor = actor_of(request)
    deployments = (
        gate.visible(actor, Deployment)
        .select_related("owner_team", "version__model", "pool")
        .annotate(ready_count=Count("replica_set", filter=Replica.serving("replica_set__")))
        .order_by("name", "id")
    )
    page = listing.paginate(request, deployments)
    page.object_list = list(page.object_list)
    for deployment in page.object_list:
        deployment.version_url = version_url(deployment.version)
    return render(
        request,
        "serving/deployment_list.html",
        {"page": page, "can_create": gate.can(actor, "deployment.manage")},
    )


@require_http_methods(["GET", "POST"])
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

    def create() -> Deployment:
        data = form.cleaned_data
        return services.create_deployment(
            actor=actor,
            name=data["name"],
            team=data["team"],
            version=data["version"],
            pool=data["pool"],
            replicas=data["replicas"],
            args=form.engine_args(data["pool"].kind),
        )

    created = submit(
        request,
        form,
        create,
        success=lambda deployment: f"Deployment {deployment.name} created; its replicas start below.",
        then=lambda deployment: redirect("deployment-detail", name=deployment.name),
        refused=_show_refusal,
    )
    if created is not None:
        return created
    return render(
        request,
        "serving/deployment_form.html",
        {"form": form, "refusal": form.refusal, "engine_fields": form.engine_fields(form.pool_kind())},
    )


def _show_refusal(form: DeploymentForm, exc: DomainError) -> None:
    """No room for the replicas is said above the form (it is no field's fault); the rest goes next to
    its field."""
    if exc.code == "unschedulable":
        form.refusal = exc.message
    else:
        apply_serving_error(form, exc)


def _settling(deployment: Deployment, replicas: list[Replica], reloading: set[int]) -> bool:
    """Whether the deployment is on its way somewhere (the page polls) or stable (it stops polling);
    ``reloading``: the ids of the replicas holding an adapter at another version than the one attached."""
    if deployment.status == DeploymentStatus.PENDING:
        return True
    live = [r for r in replicas if r.desired == DesiredState.RUNNING]
    if any(r.state in SETTLING_STATES for r in replicas):
        return True
    if any(r.desired == DesiredState.STOPPED and r.state != ReplicaState.STOPPED for r in replicas):
        return True  # scaled down or replaced: waiting for the agent to stop it
    if any(r.generation != deployment.generation for r in live):
        return True  # a rolling restart or update in progress
    if any(r.pk in reloading for r in live):
        return True  # an adapter held at the version attached before, being reloaded
    current = sum(r.generation == deployment.generation for r in live)
    # A change not yet picked up by the reconcile; unless the scheduler already said it cannot place it.
    return current != deployment.replicas and not deployment.status_detail.startswith("Cannot place")


def _live_context(actor: Actor, deployment: Deployment) -> dict:
    """What the polled parts of the deployment page show: status, replicas, engine logs, timeline."""
    replicas = list(deployment.replica_set.select_related("node").order_by("id"))
    attached = dict(deployment.adapters.values_list("name", "version_id"))
    now = timezone.now()
    for replica in replicas:
        replica.served_adapters, replica.reloading_adapters = adapter_holding.shown(replica, attached)
        replica.health_age = (
            age_label((now - replica.last_health_at).total_seconds()) if replica.last_health_at else ""
        )
        replica.is_old = replica.generation != deployment.generation
        replica.cores = scheduler.cpu_list(replica.cpu_ids)
    ready = sum(r.state == ReplicaState.READY and r.desired == DesiredState.RUNNING for r in replicas)
    events = list(deployment.events.order_by("-at", "-id")[:TIMELINE_LENGTH])
    for event in events:
        event.tone = EVENT_TONES.get(event.kind, "muted")
    return {
        "deployment": deployment,
        "replicas": replicas,
        "ready_count": ready,
        "events": events,
        "polling": _settling(deployment, replicas, {r.pk for r in replicas if r.reloading_adapters}),
        "poll_seconds": DEPLOYMENT_POLL_SECONDS,
        # Engine logs can carry prompts and paths: only for those who run the deployment.
        "can_see_logs": gate.can(actor, "deployment.manage", deployment),
        # Where engines listen (host, port) and their pids: for pool managers only.
        "can_see_addresses": gate.can(actor, "pool.manage"),
        # A rolling change with no room for its surge replica: the way out, for those who run the deployment.
        "can_replace_in_place": deployment.status_detail.startswith(reconcile.SURGE_BLOCKED)
        and reconcile.surges(deployment)
        and gate.can(actor, "deployment.manage", deployment),
    }


def deployment_page(request, actor: Actor, deployment: Deployment, *, status: int = 200, **extra):
    """The deployment page, or only its live parts for the htmx poll."""
    context = _live_context(actor, deployment)
    if wants_fragment(request):
        return htmx.render(request, "serving/partials/deployment_live.html", context)
    can_manage = gate.can(actor, "deployment.manage", deployment)
    can_call = gate.can(actor, "endpoint.call", deployment)
    adapters = list(deployment.adapters.select_related("version__model").order_by("name"))
    for adapter in adapters:
        adapter.version_url = version_url(adapter.version)
    try:
        resolved_args = engine_args.for_deployment(deployment)
    except Invalid:
        resolved_args = deployment.engine_args
    routes = (
        EndpointRoute.objects.filter(deployment=deployment, endpoint__in=gate.visible(actor, Endpoint))
        .select_related("endpoint", "adapter")
        .order_by("endpoint__name", "id")
    )
    context |= {
        "version_url": version_url(deployment.version),
        "registry_url": url_or_blank("model-list"),
        "adapters": adapters,
        "engine_args": [
            {"name": name, "value": arg_value(value), "custom": name in deployment.engine_args}
            for name, value in resolved_args.items()
        ],
        "routes": routes,
        "month_cost": costs.deployment_this_month(
            deployment.name, team_id=deployment.owner_team_id, created_at=deployment.created_at
        ),
        "currency": settings.BILLING_CURRENCY,
        "can_manage": can_manage,
        "update_strategies": UpdateStrategy.choices,
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
    return htmx.render(request, "serving/deployment_detail.html", context, status=status)


@require_GET
def deployment_detail(request, name: str):
    """Permission: the deployment is visible (``gate.get_visible``), else 404. The engine log is shown to
    ``deployment.manage`` only. htmx gets the live parts, polled every 3 s while the deployment settles."""
    actor = actor_of(request)
    return deployment_page(request, actor, visible_deployment(actor, name))
