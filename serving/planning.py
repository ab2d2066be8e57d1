"""What a deployment's replicas should become: a pure function, unit-tested without a database.

Rolling changes surge by one: replicas of an older generation (a restart or a version change) or on a
draining node keep serving until enough current replicas are ready, then stop one by one. Without surge
(``surge=False``: no room for an extra replica) they are replaced in place, as a Kubernetes rollout with
maxSurge 0 and maxUnavailable 1: one old replica stops, and its successor starts once it has stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.choices import DeploymentStatus, DesiredState, NodeState, ReplicaState


@dataclass(frozen=True)
class ReplicaView:
    id: int
    generation: int
    state: str
    desired: str = DesiredState.RUNNING
    node_state: str | None = NodeState.READY


@dataclass
class Plan:
    start: int = 0
    stop: list[int] = field(default_factory=list)
    forget: list[int] = field(default_factory=list)
    status: str = DeploymentStatus.PENDING
    surging: bool = False  # a replica started while the old ones it replaces still serve: it needs extra room


def plan(desired: int, generation: int, replicas: list[ReplicaView], *, surge: bool = True) -> Plan:
    result = Plan()
    live: list[ReplicaView] = []
    stopping = 0
    for replica in replicas:
        gone = replica.node_state in (None, NodeState.LOST)
        finished = replica.state == ReplicaState.STOPPED
        if finished or gone:
            # On a lost or deleted node, whatever its state, one stopping too: no agent is left to say it stopped
            # (a scale to 0 could never end, nor the deployment be deleted), and an agent that comes back kills
            # the engines of replicas it no longer has as orphans.
            result.forget.append(replica.id)
        elif replica.desired == DesiredState.RUNNING:
            live.append(replica)
        else:
            stopping += 1  # on its way out: still holds its room on the node
    current = [r for r in live if r.generation == generation and r.node_state != NodeState.DRAINING]
    leaving = [r for r in live if r not in current]

    def stop_order(r: ReplicaView) -> tuple:
        # Stop what serves nobody first: not-ready before ready, newest before oldest.
        return (r.state == ReplicaState.READY, -r.id)

    if len(current) > desired:
        excess = sorted(current, key=stop_order)[: len(current) - desired]
        result.stop += [r.id for r in excess]
        current = [r for r in current if r not in excess]
    ready_current = sum(r.state == ReplicaState.READY for r in current)
    keep_leaving = max(0, desired - ready_current)
    if not surge and leaving:
        # In place: at most `desired` replicas at a time, and one old one stops only when no new one is on its
        # way (every current replica is ready) and a new one is still needed.
        in_flight = len(current) > ready_current
        keep_leaving = min(keep_leaving, max(0, desired - len(current) - (0 if in_flight else 1)))
    if len(leaving) > keep_leaving:
        stopped_now = sorted(leaving, key=stop_order)[: len(leaving) - keep_leaving]
        result.stop += [r.id for r in stopped_now]
        stopping += len(stopped_now)
    staying = min(len(leaving), keep_leaving)
    # Surge by one while replicas are being replaced: never more than desired + 1 at a time.
    result.start = max(0, min(desired - len(current), desired + 1 - len(current) - staying))
    if not surge:
        # In place: a successor starts once the replica it replaces has stopped and given back its room.
        result.start = max(0, desired - len(current) - staying - stopping)
    result.surging = result.start > 0 and len(current) + staying + result.start > desired

    if desired == 0:
        result.status = DeploymentStatus.STOPPED if not live else DeploymentStatus.PENDING
    elif any(r.state == ReplicaState.FAILED for r in current):
        result.status = DeploymentStatus.DEGRADED
    elif ready_current >= desired:
        result.status = DeploymentStatus.RUNNING
    return result
