"""The permission decision of each billing page and REST route, for tests/test_route_permissions.py, and
where the pages' URL arguments come from (``UI_KWARGS``): the world's department, this month. The REST
routes are checked for every role (department managers included) in tests/billing/test_permissions.py."""

from __future__ import annotations

from django.utils import timezone

from tests.permissions import Rule, ui

UI_ROUTES: dict[str, Rule] = {
    # Readers of billing anywhere (owners of any team, auditors, managers, admins) open the overview, the
    # statement list and the price book: each shows what the reader may read.
    "billing": ui("any_team", "billing.view"),
    "billing-statements": ui("any_team", "billing.view"),
    "billing-prices": ui("any_team", "billing.view"),
    # One department's month: its readers; a reader of other departments only gets 404.
    "billing-statement": ui("team", "billing.view"),
    "billing-statement-reissue": ui("team", "statement.reissue", "POST", reason="a correction of the price"),
    "billing-price-set": ui("org", "price.manage", "POST", kind="store", subject="store:local"),
    # Budgets: the list, whoever reads billing; a team's form, budget.manage over it; a department's, admins.
    "billing-budgets": ui("any_team", "billing.view"),
    "billing-team-budget": ui("team", "budget.manage", "POST", amount="100", thresholds="50, 100"),
    "billing-team-budget-delete": ui("team", "budget.manage", "POST"),
    "billing-department-budget": ui("team", "department.change", "POST", amount="1000", thresholds="80"),
    "billing-department-budget-delete": ui("team", "department.change", "POST"),
}


def ui_kwargs(route: str, values: dict) -> dict:
    if route in ("billing-statement", "billing-statement-reissue"):
        return {"cost_center": "CC-100", "month": timezone.now().strftime("%Y-%m")}
    if route.startswith("billing-team-budget"):
        return {"team_id": values["team_id"]}
    if route.startswith("billing-department-budget"):
        return {"department_id": values["department_id"]}
    return {}


UI_KWARGS: dict[str, dict[str, str]] = {
    name: {}
    for name in (
        "billing-statement",
        "billing-statement-reissue",
        "billing-team-budget",
        "billing-team-budget-delete",
        "billing-department-budget",
        "billing-department-budget-delete",
    )
}


BILLING = Rule("billing")

API_ROUTES: dict[str, Rule] = {
    "GET /billing/prices": BILLING,
    "POST /billing/prices": BILLING,
    "GET /billing/prices/subjects": BILLING,
    "GET /billing/spend": BILLING,
    "GET /billing/statements": BILLING,
    "GET /billing/statements/{department}/{month}": BILLING,
    "POST /billing/statements/{statement_id}/reissue": BILLING,
    "POST /billing/departments/{department_id}/statements/{month}/export": BILLING,
    "GET /billing/budgets": BILLING,
    "PUT /billing/budgets/teams/{team_id}": BILLING,
    "DELETE /billing/budgets/teams/{team_id}": BILLING,
    "PUT /billing/budgets/departments/{department_id}": BILLING,
    "DELETE /billing/budgets/departments/{department_id}": BILLING,
}
