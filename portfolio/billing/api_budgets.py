"""The budgets' REST API: read the budgets one may see, set or remove a team's or a department's.

Who may do what is budgets.py's (admins set any; a department's managers its teams'; a team's owners lower
their team's amount within its ceiling): these routes only parse. A field left out of a PUT keeps what the
budget has (or the default of a new one); ``ceiling: null`` removes the ceiling, ``webhook_url: ""`` the
webhook, which is answered only as its scheme, host and a fingerprint (its path may be its credential).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate

from portfolio.accounts import gate
from portfolio.accounts.models import Department, Team
from portfolio.billing import access, budgets
from portfolio.billing.api import Pages
from portfolio.billing.models import Budget
from portfolio.billing.models.budgets import audited_webhook
from portfolio.errors import Forbidden, NotFound

router = Router(tags=["billing"])

Money = Annotated[Decimal, Field(ge=0, le=budgets.MAX_AMOUNT, max_digits=14, decimal_places=2)]


class BudgetOut(Schema):
    id: int
    scope: str
    team_id: int | None
    department_id: int | None
    name: str
    amount: Decimal
    ceiling: Decimal | None
    thresholds: list[int]
    hard_limit: bool
    notify_emails: list[str]
    # As audit rows keep it (scheme, host, a fingerprint): the path is often the hook's credential, and every
    # reader of billing (auditors, department managers) lists budgets. Whoever sets it keeps the URL itself.
    webhook_url: str
    webhook_set: bool
    updated_at: datetime

    @staticmethod
    def resolve_name(obj: Budget) -> str:
        if obj.department is not None:
            return obj.department.cost_center
        assert obj.team is not None, "a budget is of a team or of a department"
        return obj.team.slug

    @staticmethod
    def resolve_webhook_url(obj: Budget) -> str:
        return audited_webhook(obj.webhook_url)

    @staticmethod
    def resolve_webhook_set(obj: Budget) -> bool:
        return bool(obj.webhook_url)


class BudgetIn(Schema):
    """A month's budget in the currency; alerts at ``thresholds`` (percent of it), refused spending past it
    with ``hard_limit``. ``ceiling`` (a team's only) is the most its owners may set."""

    amount: Money
    ceiling: Money | None = None
    thresholds: list[int] | None = Field(None, max_length=budgets.MAX_THRESHOLDS)
    hard_limit: bool | None = None
    notify_emails: list[str] | None = Field(None, max_length=budgets.MAX_EMAILS)
    webhook_url: str | None = Field(None, max_length=budgets.MAX_URL)


def _changes(payload: BudgetIn) -> dict:
    """The optional fields the request gave, for set_budget (others: budgets.UNCHANGED)."""
    changes = {}
    for name in ("ceiling", "thresholds", "hard_limit", "notify_emails", "webhook_url"):
        value = getattr(payload, name)
        given = name in payload.model_fields_set and (value is not None or name == "ceiling")
        changes[name] = value if given else budgets.UNCHANGED
    return changes


@router.get("/budgets", response=list[BudgetOut])
@paginate(Pages, page_size=50)
def list_budgets(request):
    """Whoever reads billing: the budgets of the departments and teams they read (all for admins and
    auditors)."""
    gate.require(request.auth, "billing.view")  # a reader of no billing: 403, as the other lists
    return budgets.readable(request.auth)


@router.put("/budgets/teams/{team_id}", response=BudgetOut)
def set_team_budget(request, team_id: int, payload: BudgetIn):
    """Admins and the team's department managers set all of it; the team's owners its amount (within the
    ceiling and the department's budget), its alerts and notifications. A team not visible: 404. Audited
    as ``budget.set``."""
    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        raise NotFound("Team not found.")
    budget = budgets.set_budget(actor=request.auth, team=team, amount=payload.amount, **_changes(payload))
    return Budget.objects.select_related("team", "department").get(pk=budget.pk)  # as stored


@router.put("/budgets/departments/{department_id}", response=BudgetOut)
def set_department_budget(request, department_id: int, payload: BudgetIn):
    """Platform admins (a department the caller reads nothing of: 404). Audited as ``budget.set``."""
    department = Department.objects.filter(pk=department_id).first()
    if department is None:
        raise NotFound("Department not found.")
    budget = budgets.set_budget(
        actor=request.auth, department=department, amount=payload.amount, **_changes(payload)
    )
    return Budget.objects.select_related("team", "department").get(pk=budget.pk)  # as stored


@router.delete("/budgets/teams/{team_id}", response={204: None})
def delete_team_budget(request, team_id: int):
    """Admins and the team's department managers (a team not visible, or without a budget: 404)."""
    # Who may act on the team is settled before its budget is looked up: the answer must not tell a caller
    # who may not budget the team whether it has a budget.
    gate.require(request.auth, "budget.manage", gate.get_visible(request.auth, Team, pk=team_id))
    budget = Budget.objects.filter(team_id=team_id).select_related("team").first()
    if budget is None:
        raise NotFound("No budget of that team.")
    budgets.delete_budget(actor=request.auth, budget=budget)
    return Status(204, None)


@router.delete("/budgets/departments/{department_id}", response={204: None})
def delete_department_budget(request, department_id: int):
    """Platform admins (a department without a budget: 404)."""
    access.department(request.auth, department_id)  # before the budget, as for teams
    if not request.auth.is_admin:
        raise Forbidden("Only platform admins remove a department's budget.")
    budget = Budget.objects.filter(department_id=department_id).first()
    if budget is None:
        raise NotFound("No budget of that department.")
    budgets.delete_budget(actor=request.auth, budget=budget)
    return Status(204, None)
