"""Migration 0011: alerts already sent are taken to be of their budget's amount now (the amount was not
recorded); the unique key then includes the amount."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("billing", "0010_compute_gpu_share")]
AFTER = [("billing", "0011_budget_alert_amount")]


def test_alerts_sent_get_their_budgets_amount_and_an_alert_per_amount(team, other_team):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Budget, Alert = old.get_model("billing", "Budget"), old.get_model("billing", "BudgetAlert")
    october = date(2026, 10, 1)
    for slug, amount in (("support-ai", "100"), ("contracts", "250.50")):
        budget = Budget.objects.create(scope="team", team_id=old.get_model("accounts", "Team").objects.get(
            slug=slug).pk, amount=Decimal(amount))  # fmt: skip
        Alert.objects.create(budget=budget, month=october, threshold=80, spend=Decimal("90"))

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("billing", "BudgetAlert")
    assert sorted(new.objects.values_list("budget__team__slug", "amount")) == [
        ("contracts", Decimal("250.50")),
        ("support-ai", Decimal("100.00")),
    ]
    first = new.objects.get(budget__team__slug="support-ai")
    new.objects.create(budget_id=first.budget_id, month=october, threshold=80, amount=Decimal("200"), spend=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        new.objects.create(
            budget_id=first.budget_id, month=october, threshold=80, amount=Decimal("100"), spend=1
        )

    # And back: one alert per threshold and month again, the highest amount's kept (the old constraint was
    # put back over two rows and failed).
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    back = executor.loader.project_state(BEFORE).apps.get_model("billing", "BudgetAlert")
    assert sorted(back.objects.values_list("budget__team__slug", "spend")) == [
        ("contracts", Decimal("90.00")),
        ("support-ai", Decimal("1.00")),
    ]
