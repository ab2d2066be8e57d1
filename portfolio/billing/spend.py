"""Money spent so far in a month, per team and per department: what budgets, the billing pages and the
gateway's hard limits compare against. The same charges as the draft statements, computed for every
department in one pass; adjustment lines for earlier months are not part of a month's spend (they are
those months' usage, and show on the statement)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from django.utils import timezone

from portfolio.billing import money
from portfolio.billing.charges import charges_of
from portfolio.billing.choices import LineKind

if TYPE_CHECKING:
    from portfolio.billing.models import Budget

ZERO = Decimal("0.00")


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

    def of_budget(self, budget: Budget) -> tuple[Decimal, Decimal]:
        """The spend of a budget's team or department: the total, and its token part."""
        if budget.team_id is not None:
            return self.of_team(budget.team_id), self.team_tokens.get(budget.team_id, ZERO)
        assert budget.department_id is not None
        return self.of_department(budget.department_id), self.department_tokens.get(
            budget.department_id, ZERO
        )

    def stored(self, budget: Budget) -> dict:
        """The budget's spend fields as of this measure (what the gateway's hard limits read)."""
        total, tokens = self.of_budget(budget)
        return {
            "spend_month": self.month,
            "token_spend": tokens,
            "other_spend": total - tokens,
            "spend_as_of": self.as_of,
        }


# What the gateway's counters count: priced calls, settled as they end. An at-cost share is not among them
# (it is known only over the month, and such a call settles to 0): it is other spend, which lowers the hard
# limit itself. As token spend it was the counters' seed, which they never reach live: each call raised the
# counter to it again, dropping the priced calls settled since the spend was measured.
TOKEN_KINDS = {LineKind.TOKENS}


def _add(totals: dict[int, Decimal], key: int | None, amount: Decimal) -> None:
    if key is not None:
        totals[key] = totals.get(key, ZERO) + amount


def month_to_date(as_of: datetime | None = None, department_ids=None, month: date | None = None) -> Spend:
    """Spend of the month of ``as_of`` (default now) of the departments (default all); of an earlier
    ``month`` if given (all of it, when ``as_of`` is past its end).

    The token part is what the gateway's counters count: a team's priced calls to other teams' endpoints;
    a department's to other departments' endpoints (between two of its own teams, the caller's charge and
    the owner's credit cancel out). At-cost shares are in the total only."""
    as_of = as_of or timezone.now()
    month = month or money.month_start(as_of)
    spend = Spend(month, as_of)
    scope = None if department_ids is None else set(department_ids)
    for line in charges_of(scope, month, as_of):
        _add(spend.departments, line.department_id, line.amount)
        _add(spend.teams, line.team_id, line.amount)
        if line.kind in TOKEN_KINDS:
            _add(spend.team_tokens, line.team_id, line.amount)
            if line.owner_department_id != line.department_id:
                _add(spend.department_tokens, line.department_id, line.amount)
    return spend
