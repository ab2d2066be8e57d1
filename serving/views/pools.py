"""The pools page: each compute pool with its nodes' reserved capacity and heartbeat, refreshed every 5 s,
and the node actions (cordon, drain, make ready) of platform admins."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.db.models import Count, Prefetch, Q
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import htmx
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.models import Team
from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook
from portfolio.errors import Conflict, Invalid
from portfolio.formviews import submit
from portfolio.templatetags.formatting import age_label, gib
from serving import services
from serving.capacity import CoreHold, core_holds, nodes_usage
from serving.choices import NodeState, ReplicaState
from serving.forms.base import apply_serving_error
from serving.forms.pools import NodeStateForm, PoolCreateForm
from serving.models import ComputePool, Deployment, Node
from serving.views.display import bar, rate

POOLS_POLL_SECONDS = 5
NODE_ACTIONS = {
    NodeState.CORDONED: ("Cordon", "No new replicas are placed on {node}; running ones stay."),
    NodeState.DRAINING: (
        "Drain",
        "Replicas on {node} move to other nodes, each once its replacement is ready.",
    ),
    NodeState.READY: ("Make ready", "{node} takes new replicas again."),
}


def _node_rows(
    pool: ComputePool,
    now,
    visible_deployments: set[int],
    usage: dict[int, dict],
    holds: dict[int, list[CoreHold]],
) -> list[dict]:
    stale_after = settings.NODE_HEARTBEAT_SECONDS * 2
    rows = []
    for node in pool.nodes.all():
        use = usage[node.pk]
        age = (now - node.heartbeat_at).total_seconds() if node.heartbeat_at else None
        bars = [
            bar(
                "RAM",
                f"{gib(use['ram_used'])} / {gib(use['ram_total'])} GiB",
                use["ram_used"],
                use["ram_total"],
            ),
            bar(
                "Cores", f"{use['cores_used']} / {use['cores_total']}", use["cores_used"], use["cores_total"]
            ),
        ]
        for gpu in use["gpus"]:
            bars.append(
                bar(
                    f"GPU {gpu['index']}",
                    f"{gib(gpu['used'])} / {gib(gpu['total'])} GiB",
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
                # Which replica's engine is bound to which cores; another team's deployment is not named.
                "core_holds": [
                    {
                        "cores": hold.cores,
                        "holder": f"{hold.deployment} #{hold.replica_id}"
                        if hold.deployment_id in visible_deployments
                        else "another team's replica",
                        "deployment": hold.deployment if hold.deployment_id in visible_deployments else "",
                    }
                    for hold in holds.get(node.pk, [])
                ],
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
    book = PriceBook.load(kinds=[PriceKind.POOL], until=now + timedelta(seconds=1))  # versions in force now
    visible_deployments = set(gate.visible(actor, Deployment).values_list("pk", flat=True))
    # The capacity of every pool on the page from one read of their replicas, not one per pool.
    shown = [node for pool in pools for node in pool.nodes.all()]
    usage, holds = nodes_usage(shown), core_holds(shown)
    for pool in pools:
        pool.node_rows = _node_rows(pool, now, visible_deployments, usage, holds)
        price = book.at(PriceKind.POOL, pool.pk, now)
        pool.price = (
            {name: rate(value) for name, value in price.rates().items()} if price is not None else None
        )
    context = {
        "pools": pools,
        "can_manage": gate.can(actor, "pool.manage"),
        "poll_seconds": POOLS_POLL_SECONDS,
        "notice": notice,
        "error": error,
        "node_pool_setting": settings.NODE_POOL,
    }
    return htmx.page_or_fragment(request, "serving/pool_list.html", "serving/partials/pools.html", context)


@require_GET
def pool_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows the pools open to their teams (all pools to
    org-wide roles). htmx gets the pools section, which refreshes itself every 5 s."""
    return _pools_response(request, actor_of(request))


@require_http_methods(["GET", "POST"])
def pool_create(request):
    """Permission: ``pool.manage`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "pool.manage")
    form = PoolCreateForm(request.POST if request.method == "POST" else None)
    created = submit(
        request,
        form,
        lambda: services.create_pool(actor=actor, **form.cleaned_data),
        success=lambda pool: (
            f"Pool {pool.name} created. Machines join it when their node agent starts with "
            f"PORTFOLIO_NODE_POOL={pool.name}."
        ),
        then=lambda _: redirect("pool-list"),
        refused=apply_serving_error,
    )
    if created is not None:
        return created
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
