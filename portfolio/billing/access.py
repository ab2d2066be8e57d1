"""Who reads which part of billing, derived from the capability matrix (``billing.view``):

- platform admins and auditors read every department;
- a department manager reads the departments they manage, every team in them;
- a team owner reads their own teams' lines, in the departments of those teams, and nothing else.

Everything else answers 404, like any object the gate hides.
"""

from __future__ import annotations

from dataclasses import dataclass

from portfolio.accounts.actor import Actor
from portfolio.accounts.capabilities import role_allows
from portfolio.accounts.models import Department, Team
from portfolio.errors import NotFound


@dataclass(frozen=True)
class Reader:
    """What one actor may read of billing: every department, or some departments whole and some teams."""

    everything: bool
    departments: frozenset[int]  # read whole
    teams: frozenset[int]  # read only these teams' lines

    def sees_department(self, department_id: int | None) -> bool:
        return self.everything or department_id in self.departments

    def team_filter(self, department_id: int) -> frozenset[int] | None:
        """The teams of ``department_id`` whose lines the actor reads: None means all of them."""
        return None if self.sees_department(department_id) else self.teams

    def department_ids(self) -> set[int] | None:
        """Departments the actor reads anything of (None: all)."""
        if self.everything:
            return None
        return set(self.departments) | set(
            Team.objects.filter(pk__in=self.teams).values_list("department_id", flat=True)
        )


def reader(actor: Actor) -> Reader:
    if actor.is_admin or actor.is_auditor:
        return Reader(True, frozenset(), frozenset())
    managed = frozenset(actor.managed_department_ids)
    owned = frozenset(team for team, role in actor.team_roles.items() if role_allows({role}, "billing.view"))
    return Reader(False, managed, owned)


def departments(actor: Actor):
    """The departments whose billing the actor reads some of, as a queryset."""
    ids = reader(actor).department_ids()
    return Department.objects.all() if ids is None else Department.objects.filter(pk__in=ids)


def department(actor: Actor, department_id) -> Department:
    """One department the actor reads some of, else NotFound (as if it did not exist)."""
    try:
        return departments(actor).get(pk=int(department_id))
    except (Department.DoesNotExist, TypeError, ValueError):
        raise NotFound("Department not found.") from None
