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
}


def ui_kwargs(route: str, values: dict) -> dict:
    if route in ("billing-statement", "billing-statement-reissue"):
        return {"cost_center": "CC-100", "month": timezone.now().strftime("%Y-%m")}
    return {}


UI_KWARGS: dict[str, dict[str, str]] = {"billing-statement": {}, "billing-statement-reissue": {}}


BILLING = Rule("billing")

API_ROUTES: dict[str, Rule] = {
    "GET /billing/prices": BILLING,
    "POST /billing/prices": BILLING,
    "GET /billing/prices/subjects": BILLING,
    "GET /billing/spend": BILLING,
    "GET /billing/statements": BILLING,
    "GET /billing/statements/{department}/{month}": BILLING,
    "POST /billing/statements/{statement_id}/reissue": BILLING,
    "GET /billing/budgets": BILLING,
    "PUT /billing/budgets/teams/{team_id}": BILLING,
    "DELETE /billing/budgets/teams/{team_id}": BILLING,
    "PUT /billing/budgets/departments/{department_id}": BILLING,
    "DELETE /billing/budgets/departments/{department_id}": BILLING,
}
