"""The billing overview: a month's spend by department, team and endpoint, a chart over the days, the
forecast to month end from the run rate, and the budgets' bars."""

from __future__ import annotations

from decimal import Decimal

from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from portfolio.billing import access, budgets, money
from portfolio.billing.choices import LineKind
from portfolio.billing.overview import month_spend
from portfolio.billing.statements import ZERO, label
from portfolio.billing.views import billing_reader
from portfolio.billing.views.chart import Day, spend_chart
from portfolio.errors import Invalid, NotFound

ENDPOINT_KINDS = {LineKind.TOKENS, LineKind.AT_COST}


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
    owners, only their teams' part (no department totals). ``?month=YYYY-MM`` shows an earlier month
    (its closed statements where there are)."""
    actor, reader = billing_reader(request)
    now = timezone.now()
    try:
        month = money.parse_month(request.GET.get("month"), now)
    except Invalid:
        raise NotFound("No such month.") from None
    spend = month_spend(reader, month, now, team_days=False)
    cost_centers = dict(access.departments(actor).values_list("pk", "cost_center"))
    # A budget is of the month's own spend, as its alerts and hard limit measure it (billing.spend): the
    # adjustments for earlier months on the draft are left out of its bar.
    by_department = {
        row.department_id: row.spend - row.adjustments for row in spend.departments if not row.partial
    }
    department_rows = [
        {"key": row.department_id, "name": row.name, "amount": row.spend, "forecast": row.forecast,
         "cost_center": cost_centers.get(row.department_id, "")}
        for row in spend.departments
        if not row.partial
    ]  # fmt: skip
    by_team = {row.key[0]: row.spend - row.adjustments for row in spend.teams}
    team_rows = [
        {"key": row.key[0], "name": row.name, "amount": row.spend, "forecast": row.forecast,
         "cost_center": cost_centers.get(row.department_id or 0, "")}
        for row in spend.teams
    ]  # fmt: skip
    by_endpoint: dict[str, Decimal] = {}
    for row in spend.subjects:
        if row.kind in ENDPOINT_KINDS:
            by_endpoint[row.name] = by_endpoint.get(row.name, ZERO) + row.spend
    budget_rows = []
    for budget in budgets.readable(actor):
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
    return render(
        request,
        "billing/overview.html",
        {
            "month": month,
            "month_label": label(month),
            "current": month == money.month_start(now),
            "now": now,
            "currency": spend.currency,
            "total": spend.total,
            "forecast": spend.forecast,
            "elapsed_percent": round(100 * spend.elapsed, 1),
            "departments": department_rows,
            "teams": team_rows,
            "endpoints": _rows(by_endpoint, {}),
            "budgets": budget_rows,
            "chart": spend_chart(
                [
                    Day(day, total - compute, compute)
                    for day, total, compute in zip(
                        spend.days, spend.day_totals, spend.day_compute, strict=True
                    )
                ],
                spend.currency,
            ),
            "teams_only": not reader.everything and not reader.departments,
        },
    )
