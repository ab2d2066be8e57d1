from django.db import models

from portfolio import badges


class PoolKind(models.TextChoices):
    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU"


@badges.toned("node", ready="ok", draining="warn", cordoned="info", lost="danger")
class NodeState(models.TextChoices):
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    CORDONED = "cordoned", "Cordoned"
    LOST = "lost", "Lost"


@badges.toned("deployment", running="ok", pending="warn", degraded="danger")
class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    STOPPED = "stopped", "Stopped"


@badges.toned(
    "replica",
    ready="ok",
    pending="warn",
    starting="warn",
    backoff="warn",
    unhealthy="danger",
    failed="danger",
)
class ReplicaState(models.TextChoices):
    PENDING = "pending", "Scheduled"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    UNHEALTHY = "unhealthy", "Unhealthy"
    BACKOFF = "backoff", "Restarting (back-off)"
    FAILED = "failed", "Failed"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"

    @classmethod
    def active(cls) -> frozenset[str]:
        """States of a replica that holds (or will hold) resources on its node."""
        return frozenset({cls.PENDING, cls.STARTING, cls.READY, cls.UNHEALTHY, cls.BACKOFF, cls.STOPPING})

    @classmethod
    def engine_running(cls) -> frozenset[str]:
        """States of a replica whose engine runs, and holds the adapters it loaded."""
        return frozenset({cls.STARTING, cls.READY, cls.UNHEALTHY, cls.STOPPING})


class UpdateStrategy(models.TextChoices):
    """How a rolling change (restart, version update) replaces a deployment's replicas."""

    SURGE = "surge", "Surge: start a new replica before stopping an old one"
    REPLACE = "replace", "Replace in place: stop an old replica, then start a new one"


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


@badges.toned(
    "rollout",
    labels={"rolled_back": "rolled back"},
    canary="warn",
    promoted="ok",
    rolled_back="danger",
    aborted="info",
)
class RolloutState(models.TextChoices):
    CANARY = "canary", "Canary watched"
    PROMOTED = "promoted", "Promoted"
    ROLLED_BACK = "rolled_back", "Rolled back"
    ABORTED = "aborted", "Aborted"


class EndpointKind(models.TextChoices):
    """What an endpoint does with a request: route it by weight, or compose other (plain) endpoints."""

    PLAIN = "plain", "Weighted routes"
    ROUTER = "router", "Router (a classifier picks a specialist)"
    CASCADE = "cascade", "Cascade (escalate on low confidence)"
    VOTE = "vote", "Test-time compute (n samples, one answer)"


class StickyBy(models.TextChoices):
    """How the gateway picks among an endpoint's weighted routes for one request."""

    NONE = "none", "Random by weight"
    API_KEY = "api_key", "Sticky per API key"
    HEADER = "header", "Sticky per request header"
