from django.core.management.base import BaseCommand
from django.db import transaction

from serving import processes, replica_meter
from serving.choices import DesiredState, ReplicaState
from serving.models import Replica
from serving.timeline import event

# States that claim a running engine: wrong while the engine is gone.
CLAIMS_AN_ENGINE = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY)


class Command(BaseCommand):
    help = (
        "Before this machine's node agent starts (`portfolio run` does it): replicas on NODE that still claim "
        "an engine which no longer runs (stopped with the last `portfolio run`, or the machine restarted) go "
        "back to scheduled. The agent starts them again, and until they answer, nobody (the gateway, the "
        "demo) is sent to them. Engines still running are left to the agent to adopt."
    )

    def add_arguments(self, parser):
        parser.add_argument("--node", required=True)

    def handle(self, *args, node: str, **options):
        requeued = 0
        stale = Replica.objects.filter(
            node__name=node, desired=DesiredState.RUNNING, state__in=CLAIMS_AN_ENGINE
        ).select_related("deployment", "node")
        for replica in stale:
            if processes.find(replica.pid, replica.pk) is not None:
                continue
            with transaction.atomic():
                # Compare-and-swap: a replica whose state changed meanwhile is left to whoever changed it.
                if Replica.objects.filter(pk=replica.pk, state=replica.state, pid=replica.pid).update(
                    state=ReplicaState.PENDING, pid=None, state_detail=""
                ):
                    # Its engine was last seen running at the node's last heartbeat: the downtime since then
                    # is not billed (a later close, by the agent or the sweep, would say now).
                    last_seen = (
                        replica.node.heartbeat_at if replica.node else None
                    )  # on this node, by the filter
                    replica_meter.stopped(replica.pk, at=last_seen)
                    event(replica, "requeued", "Its engine stopped with this machine; it starts again.")
                    requeued += 1
        if requeued:
            self.stdout.write(f"{requeued} replica(s) on {node} start again (their engines had stopped).")
