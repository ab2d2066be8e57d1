from datetime import timedelta
from time import sleep

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F
from django.db.models.functions import Now

from serving import processes, replica_meter
from serving.choices import DesiredState, ReplicaState
from serving.models import Node, Replica
from serving.timeline import event

# States that claim a running engine: wrong while the engine is gone.
CLAIMS_AN_ENGINE = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY)


class Command(BaseCommand):
    help = (
        "Before this machine's node agent starts (`portfolio run` does it): replicas on NODE that still claim "
        "an engine which no longer runs (stopped with the last `portfolio run`, or the machine restarted) go "
        "back to scheduled. The agent starts them again, and until they answer, nobody (the gateway, the "
        "demo) is sent to them. Engines still running are left to the agent to adopt. NODE must be this "
        "machine's (PORTFOLIO_NODE_NAME, else the host name), and nothing is requeued while an agent of it "
        "still heartbeats: that agent tends its own engines."
    )

    def add_arguments(self, parser):
        parser.add_argument("--node", required=True)

    def handle(self, *args, node: str, **options):
        # Whether an engine still runs is asked of this machine's processes: asked for another machine's node,
        # every one of its live engines would look gone, and be requeued, then killed by its own agent as an
        # engine nobody recorded (found by review).
        if node != settings.NODE_NAME:
            raise CommandError(
                f"--node {node} is not this machine's node ({settings.NODE_NAME}, PORTFOLIO_NODE_NAME or the "
                "host name): only the engines of this machine can be looked for here; run it there."
            )
        found = Node.objects.filter(name=node).first()
        if found is not None and _agent_beats(found):
            self.stderr.write(
                f"An agent of node {node} heartbeats (another machine under the same name, or one left "
                "running here): it tends its own engines; nothing requeued."
            )
            return
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


def _agent_beats(node: Node) -> bool:
    """Whether an agent of the node is alive: its last heartbeat (the database's clock, as the agents write
    it) is moved on within two heartbeats of it. A beat older than that was the last of an agent now gone
    (this machine's last `portfolio run`, stopped moments ago, looks just like a live one until then)."""
    window = timedelta(seconds=2 * settings.NODE_HEARTBEAT_SECONDS + 1)
    age = (
        Node.objects.filter(pk=node.pk, heartbeat_at__isnull=False)
        .annotate(age=ExpressionWrapper(Now() - F("heartbeat_at"), output_field=DurationField()))
        .values_list("heartbeat_at", "age")
        .first()
    )
    if age is None or age[1] >= window:
        return False
    sleep((window - age[1]).total_seconds())
    return Node.objects.filter(pk=node.pk, heartbeat_at__gt=age[0]).exists()
