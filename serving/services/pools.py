"""Pools and their nodes: created, changed, cordoned, drained or made ready again by platform admins."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Node
from serving.services.shared import _after_commit_reconcile, _check_name

MAX_DESCRIPTION = 5000


@transaction.atomic
def create_pool(
    *,
    actor: Actor,
    name: str,
    kind: str,
    description: str = "",
    teams: list[Team] | None = None,
) -> ComputePool:
    gate.require(actor, "pool.manage")
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description: at most {MAX_DESCRIPTION:,} characters.")
    if kind not in PoolKind.values:
        raise Invalid(f"kind: choose {' or '.join(PoolKind.values)}.")
    # Its prices are billing's (the price book, set by admins there), not the pool's.
    pool = ComputePool(name=_check_name(name), kind=kind, description=description)
    try:
        with transaction.atomic():
            pool.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"A pool named {name!r} already exists.") from None
    if teams:
        pool.allowed_teams.set(teams)
    audit.record(actor, "pool.create", pool, after=pool.snapshot())
    return pool


@transaction.atomic
def update_pool(
    *,
    actor: Actor,
    pool: ComputePool,
    description: str,
    teams: list[Team],
) -> ComputePool:
    gate.require(actor, "pool.manage")
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description: at most {MAX_DESCRIPTION:,} characters.")
    # The row as stored now, locked, into the caller's object: two changes of its teams take turns, and each
    # one's "before" lists the teams it replaces. A no-key lock, as strong as the save's own.
    pool.refresh_from_db(from_queryset=ComputePool.objects.select_for_update(no_key=True))
    before = pool.snapshot()
    pool.description = description
    pool.save(update_fields=["description"])
    pool.allowed_teams.set(teams)
    audit.record(actor, "pool.update", pool, before=before, after=pool.snapshot())
    return pool


@transaction.atomic
def set_node_state(*, actor: Actor, node: Node, state: str) -> Node:
    """Cordon (no new replicas), drain (replicas move elsewhere first) or make ready again."""
    gate.require(actor, "pool.manage")
    if state not in (NodeState.READY, NodeState.CORDONED, NodeState.DRAINING):
        raise Invalid("state: a node can be made ready, cordoned or drained.")
    # As stored now, under a lock: a node lost since the caller read it stays lost.
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.state == NodeState.LOST:
        raise Conflict(f"{node.name} is lost; it becomes ready again when its agent reports back.")
    before = node.snapshot()
    node.state = state
    node.save(update_fields=["state"])
    action: dict[str, str] = {
        NodeState.READY: "node.uncordon",
        NodeState.CORDONED: "node.cordon",
        NodeState.DRAINING: "node.drain",
    }
    audit.record(actor, action[state], node, before=before, after=node.snapshot())
    for deployment_id in node.replicas.values_list("deployment_id", flat=True).distinct():
        _after_commit_reconcile(deployment_id)
    return node
