from django.db import models

from portfolio import badges


class PriceKind(models.TextChoices):
    """What a price book entry prices: an endpoint's tokens, a pool's compute, a store's bytes."""

    ENDPOINT = "endpoint", "Endpoint tokens"
    POOL = "pool", "Pool compute"
    STORE = "store", "Artifact store"


class ComputeKind(models.TextChoices):
    """What held compute: a serving replica or a training / distillation / eval job."""

    REPLICA = "replica", "Replica"
    JOB = "job", "Job"


@badges.toned("statement", closed="ok", superseded="muted")
class StatementStatus(models.TextChoices):
    """A stored statement is closed; a re-issue supersedes it with a new revision. Drafts are never stored."""

    CLOSED = "closed", "Closed"
    SUPERSEDED = "superseded", "Superseded"


class LineKind(models.TextChoices):
    """One kind of charge on a statement."""

    TOKENS = "tokens", "Tokens"
    CREDIT = "credit", "Recovery from other teams"
    AT_COST = "at_cost", "Shared endpoint at cost"
    REPLICA = "replica", "Serving compute"
    JOB = "job", "Training compute"
    STORAGE = "storage", "Storage"
    ADJUSTMENT = "adjustment", "Late usage of a closed month"


class BudgetScope(models.TextChoices):
    TEAM = "team", "Team"
    DEPARTMENT = "department", "Department"
