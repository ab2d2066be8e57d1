"""Money spent so far in a month, per team and per department: what budgets, the billing pages and the
gateway's hard limits compare against. The same lines as the draft statements, so the three agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from django.utils import timezone

from portfolio.accounts.models import Department
from portfolio.billing import money
from portfolio.billing.choices import LineKind
from portfolio.billing.statements import ZERO, month_of


@dataclass
class Spend:
    """A month's spend up to ``as_of``: totals per team and per department, and the token part of each
    (what the gateway's counters already hold for the rest of the month)."""

    month: date
    as_of: datetime
    teams: dict[int, Decimal] = field(default_factory=dict)
    departments: dict[int, Decimal] = field(default_factory=dict)
    team_tokens: dict[int, Decimal] = field(default_factory=dict)
    department_tokens: dict[int, Decimal] = field(default_factory=dict)

    def of_team(self, team_id: int) -> Decimal:
        return self.teams.get(team_id, ZERO)

    def of_department(self, department_id: int) -> Decimal:
        return self.departments.get(department_id, ZERO)


TOKEN_KINDS = {LineKind.TOKENS, LineKind.AT_COST}


def month_to_date(as_of: datetime | None = None, department_ids=None) -> Spend:
    """Spend of the month of ``as_of`` (default now), from each department's draft (or closed statement)."""
    as_of = as_of or timezone.now()
    month = money.month_start(as_of)
    spend = Spend(month, as_of)
    departments = Department.objects.order_by("pk")
    if department_ids is not None:
        departments = departments.filter(pk__in=list(department_ids))
    for department in departments:
        draft = month_of(department, month, as_of)
        for line in draft.lines:
            spend.departments[department.pk] = spend.departments.get(department.pk, ZERO) + line.amount
            if line.kind in TOKEN_KINDS:
                spend.department_tokens[department.pk] = (
                    spend.department_tokens.get(department.pk, ZERO) + line.amount
                )
            if line.team_id is not None:
                spend.teams[line.team_id] = spend.teams.get(line.team_id, ZERO) + line.amount
                if line.kind in TOKEN_KINDS:
                    spend.team_tokens[line.team_id] = spend.team_tokens.get(line.team_id, ZERO) + line.amount
    return spend
