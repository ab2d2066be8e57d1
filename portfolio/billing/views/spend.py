"""The billing overview: this month's spend by department, team and endpoint, a chart over the days, the
forecast to month end from the run rate, and the budgets' bars."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from portfolio.billing import access, chart_days, money
from portfolio.billing.choices import LineKind
from portfolio.billing.models import Budget
from portfolio.billing.statements import ZERO, label, month_of
from portfolio.billing.views import billing_reader
from portfolio.billing.views.chart import spend_chart

ENDPOINT_KINDS = {LineKind.TOKENS, LineKind.AT_COST}


def elapsed_fraction(month, now: datetime) -> Fraction:
    """How much of the month has gone by at ``now`` (the run rate's denominator)."""
    start, end = money.month_bounds(month)
    return Fraction((min(now, end) - start).total_seconds()) / Fraction((end - start).total_seconds())


def forecast(spent: Decimal, elapsed: Fraction) -> Decimal:
    """Month-end spend if the rate so far goes on: spend / elapsed fraction of the month."""
    return money.cents(Fraction(spent) / elapsed) if elapsed > 0 else spent


def fill(spent: Decimal, amount: Decimal) -> dict:
    """A budget bar: how full (capped at 100 for the bar, not for the figure), coloured from 70 and 90 %."""
    percent = round(100 * spent / amount) if amount > 0 else (100 if spent > 0 else 0)
    shown = max(0, min(100, percent))
    return {
        "percent": percent,
        "width": shown,
        "level": "high" if percent >= 90 else "mid" if percent >= 70 else "low",
    }


def _rows(totals: dict, names: dict) -> list[dict]:
    return sorted(
        ({"key": key, "name": names.get(key, str(key)), "amount": amount} for key, amount in totals.items()),
        key=lambda row: (-row["amount"], row["name"]),
    )


@require_GET
def overview(request):
    """Permission: ``billing.view`` somewhere (else 403); shows the departments read whole and, for team
    owners, only their teams' part (no department totals)."""
    actor, reader = billing_reader(request)
    now = timezone.now()
    month = money.month_start(now)
    departments = list(access.departments(actor).order_by("name", "pk"))
    by_department: dict[int, Decimal] = {}
    by_team: dict[int | None, Decimal] = {}
    team_names: dict[int | None, str] = {}
    team_department: dict[int | None, str] = {}
    by_endpoint: dict[str, Decimal] = {}
    for department in departments:
        teams = reader.team_filter(department.pk)
        lines = [
            line for line in month_of(department, month, now).lines if teams is None or line.team_id in teams
        ]
        if teams is None:
            by_department[department.pk] = sum((line.amount for line in lines), ZERO)
        for line in lines:
            by_team[line.team_id] = by_team.get(line.team_id, ZERO) + line.amount
            team_names[line.team_id] = line.team
            team_department[line.team_id] = department.cost_center
            if line.kind in ENDPOINT_KINDS:
                by_endpoint[line.subject] = by_endpoint.get(line.subject, ZERO) + line.amount
    total = sum(by_team.values(), ZERO)
    elapsed = elapsed_fraction(month, now)
    department_rows = _rows(by_department, {d.pk: d.name for d in departments})
    cost_centers = {d.pk: d.cost_center for d in departments}
    for row in department_rows:
        row["cost_center"] = cost_centers[row["key"]]
        row["forecast"] = forecast(row["amount"], elapsed)
    team_rows = _rows(by_team, team_names)
    for row in team_rows:
        row["cost_center"] = team_department.get(row["key"], "")
        row["forecast"] = forecast(row["amount"], elapsed)
    if reader.everything:
        days = chart_days.per_day(month, now)
        budgets = Budget.objects.all()
    else:
        days = chart_days.per_day(month, now, departments=reader.departments, teams=reader.teams)
        budgets = Budget.objects.filter(
            Q(department_id__in=reader.departments)
            | Q(team_id__in=reader.teams)
            | Q(team__department_id__in=reader.departments)
        )
    budget_rows = []
    for budget in budgets.select_related("team", "department").order_by("scope", "pk"):
        spent = (
            by_department.get(budget.department_id, ZERO)
            if budget.department_id
            else by_team.get(budget.team_id, ZERO)
        )
        budget_rows.append(
            {
                "budget": budget,
                "name": budget.department or budget.team,
                "spent": spent,
                "bar": fill(spent, budget.amount),
            }
        )
    currency = settings.BILLING_CURRENCY
    return render(
        request,
        "billing/overview.html",
        {
            "month": month,
            "month_label": label(month),
            "now": now,
            "currency": currency,
            "total": total,
            "forecast": forecast(total, elapsed),
            "elapsed_percent": round(100 * float(elapsed), 1),
            "departments": department_rows,
            "teams": team_rows,
            "endpoints": _rows(by_endpoint, {}),
            "budgets": budget_rows,
            "chart": spend_chart(days, currency),
            "teams_only": not reader.everything and not reader.departments,
        },
    )
