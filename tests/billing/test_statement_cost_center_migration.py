"""Migration 0009: the statements already closed take their department's cost center and the count of their
lines, past the trigger that keeps them immutable, and still verify; from then on they gain no line."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from portfolio.billing import statements
from portfolio.billing.models import Statement

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("restores_latest_schema")]

BEFORE = [("billing", "0008_token_days_day_index_dropped")]
AFTER = [("billing", "0009_statements_keep_cost_center_and_lines")]


def test_closed_statements_are_backfilled_with_their_cost_center_and_line_count_and_still_verify():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Department = old.get_model("accounts", "Department")
    OldStatement, OldLine = old.get_model("billing", "Statement"), old.get_model("billing", "StatementLine")
    department = Department.objects.create(name="Legal", cost_center="CC-200")
    line = {"team_id": None, "team": "Contracts", "kind": "tokens", "subject": "router", "detail": "input tokens",
            "quantity": Decimal("1"), "unit": "M tokens", "unit_price": Decimal("1.5"), "amount": Decimal("1.5")}  # fmt: skip
    header = {"department": "CC-200", "month": "2026-10", "revision": 1, "currency": "EUR", "total": "3.00"}
    lines = [OldLine(position=position, **line) for position in (1, 2)]
    sha256 = statements.digest(header, lines)
    written = OldStatement.objects.create(
        department=department, month=date(2026, 10, 1), currency="EUR", total=Decimal("3.00"), sha256=sha256,
        closed_by="system:billing",
    )  # fmt: skip
    for each in lines:
        each.statement = written
    OldLine.objects.bulk_create(lines)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    stored = Statement.objects.get(pk=written.pk)
    assert (stored.cost_center, stored.line_count) == ("CC-200", 2)
    assert statements.verify(stored)
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE billing_statement SET cost_center = 'CC-999' WHERE id = %s", [stored.pk])
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_statementline (statement_id, position, team, kind, subject, detail, quantity, "
            "unit, unit_price, amount) VALUES (%s, 3, 'x', 'tokens', 'x', '', 1, 'x', 1, 1)",
            [stored.pk],
        )
