from django.urls import path, register_converter

from portfolio.billing.views import budgets, exports, prices, spend, statements


class MonthConverter:
    """``2026-03``: a statement's month in its address."""

    regex = r"[0-9]{4}-[0-9]{2}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value) -> str:
        return value if isinstance(value, str) else value.strftime("%Y-%m")


register_converter(MonthConverter, "month")

urlpatterns = [
    path("", spend.overview, name="billing"),
    path("statements/", statements.statement_list, name="billing-statements"),
    path(
        "statements/<str:cost_center>/<month:month>/", statements.statement_detail, name="billing-statement"
    ),
    path(
        "statements/<str:cost_center>/<month:month>/reissue/",
        statements.statement_reissue,
        name="billing-statement-reissue",
    ),
    path("prices/", prices.price_book, name="billing-prices"),
    path("budgets/", budgets.budget_list, name="billing-budgets"),
    path("budgets/teams/<int:team_id>/", budgets.team_budget, name="billing-team-budget"),
    path(
        "budgets/teams/<int:team_id>/remove/", budgets.team_budget_delete, name="billing-team-budget-delete"
    ),
    path(
        "budgets/departments/<int:department_id>/",
        budgets.department_budget,
        name="billing-department-budget",
    ),
    path(
        "budgets/departments/<int:department_id>/remove/",
        budgets.department_budget_delete,
        name="billing-department-budget-delete",
    ),
    path("prices/new/", prices.price_set, name="billing-price-set"),
    path(
        "departments/<int:department_id>/statements/<str:month>/export/<str:fmt>/",
        exports.statement_export,
        name="billing-statement-export",
    ),
]
