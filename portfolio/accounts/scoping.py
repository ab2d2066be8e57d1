"""What people may see of what teams own: their own teams' things; org-wide roles (platform admins,
auditors) see everything. ``gate.visible`` starts every query from ``visible_to``, and ``gate.allowed``
narrows it to the teams in which the actor may act (``of_teams``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from django.db import models


class TeamScopedQuerySet(models.QuerySet):
    """A queryset of rows owned by a team. Subclasses set ``team_path``, the lookup from a row to its
    owning team's id, and override ``visible_to`` where sharing reaches further than the owning team."""

    team_path = "owner_team_id"

    def visible_to(self, actor) -> Self:
        if actor.is_org_wide:
            return self
        return self.of_teams(actor.team_ids)

    def of_teams(self, team_ids: Iterable[int]) -> Self:
        """The rows owned by one of ``team_ids``."""
        return self.filter(**{f"{self.team_path}__in": team_ids})
