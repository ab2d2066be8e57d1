from __future__ import annotations

from django.db import models


class AuditEventQuerySet(models.QuerySet):
    def visible_to(self, actor) -> AuditEventQuerySet:
        # The audit trail is read by auditors and platform admins only (capability "audit.view").
        return self if actor.is_org_wide else self.none()


class AuditEvent(models.Model):
    """One append-only, hash-chained record of a change; PostgreSQL refuses UPDATE/DELETE/TRUNCATE."""

    sequence = models.BigIntegerField(unique=True)
    occurred_at = models.DateTimeField()
    # Plain ids, not foreign keys: deleting a user or team must never touch (or be blocked by) the trail.
    actor_kind = models.CharField(max_length=16)
    actor_label = models.CharField(max_length=150)
    actor_user_id = models.BigIntegerField(null=True)
    actor_token_id = models.BigIntegerField(null=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    department_id = models.BigIntegerField(null=True)
    team_id = models.BigIntegerField(null=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.CharField(max_length=45, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True)
    after = models.JSONField(null=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        indexes = [
            # Time-range filters on the audit page and exports.
            models.Index(fields=["occurred_at"], name="audit_occurred_at"),
            # "Everything that happened to this object".
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            # The action filter, exact (`team.create`) or a prefix (`team.`: LIKE 'team.%'), newest first. A
            # pattern_ops index serves both (`=` and the prefix's range); under a locale collation a plain one
            # cannot serve LIKE at all.
            models.Index(
                fields=["action", "sequence"],
                opclasses=["varchar_pattern_ops", "int8_ops"],
                name="audit_action_prefix",
            ),
            # The actor filter (the actor's label, as the page and API take it), newest first.
            models.Index(fields=["actor_label", "sequence"], name="audit_actor_label"),
            # Filters by team and department.
            models.Index(fields=["team_id", "sequence"], name="audit_team"),
            models.Index(fields=["department_id", "sequence"], name="audit_department"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.object_repr}"
