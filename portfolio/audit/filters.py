"""The one definition of how the audit trail is filtered: by the page, the API and exports alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.db.models import QuerySet

from portfolio.audit.models import AuditEvent


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    action: str = ""
    department_id: int | None = None
    team_id: int | None = None
    object_type: str = ""
    object_id: str = ""

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.since:
            events = events.filter(occurred_at__gte=self.since)
        if self.until:
            events = events.filter(occurred_at__lt=self.until)
        if self.actor:
            events = events.filter(actor_label=self.actor)
        if self.action:
            # "team." matches every team action; "team.create" exactly that one.
            events = (
                events.filter(action__startswith=self.action)
                if self.action.endswith(".")
                else events.filter(action=self.action)
            )
        if self.department_id is not None:
            events = events.filter(department_id=self.department_id)
        if self.team_id is not None:
            events = events.filter(team_id=self.team_id)
        if self.object_type:
            events = events.filter(object_type=self.object_type)
        if self.object_id:
            events = events.filter(object_id=self.object_id)
        return events

    @property
    def is_time_range_only(self) -> bool:
        """Such a selection is a contiguous stretch of the chain, so exports can check its links too."""
        return not any(
            (self.actor, self.action, self.department_id, self.team_id, self.object_type, self.object_id)
        )

    def describe(self) -> dict:
        return {
            key: (value.isoformat() if isinstance(value, datetime) else value)
            for key, value in asdict(self).items()
            if value not in (None, "")
        }
