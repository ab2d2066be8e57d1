"""A closed statement stays as it was closed: a renamed cost center changes neither its hash nor its
exports, and PostgreSQL refuses a line added to it as it refuses a line changed or removed."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from pypdf import PdfReader

from portfolio.accounts.actor import Actor
from portfolio.accounts.services import update_department
from portfolio.audit.models import AuditEvent
from portfolio.billing import exports, statements
from portfolio.billing.models import Statement, StatementLine
from tests.billing.conftest import tokens
from tests.conftest import actor_for

OCTOBER = date(2026, 10, 1)
BILLING = Actor.for_system("billing")
ADD_LINE = """
INSERT INTO billing_statementline (statement_id, position, team_id, team, kind, subject, detail, quantity,
    unit, unit_price, amount)
VALUES (%s, %s, NULL, 'extra', 'tokens', 'router', '', 1, 'M tokens', 1, 1)
"""


@pytest.fixture
def called(priced, team, other_team):
    """``other_team`` (CC-200) calls ``team``'s priced endpoint in October."""
    tokens("2026-10-10 10:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=1_000_000, tokens_out=500_000)  # fmt: skip


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def test_a_renamed_cost_center_leaves_a_closed_statement_its_hash_and_its_exports(org, called, other_team):
    department = other_team.department
    closed = statements.close(BILLING, department, OCTOBER)
    admin = actor_for(org["admin"])
    update_department(actor=admin, department=department, name=department.name, cost_center="CC-999")

    stored = Statement.objects.get(pk=closed.pk)
    assert statements.verify(stored)
    csv_export = exports.export(
        actor=admin, department_id=department.pk, month="2026-10", fmt="csv", revision=1
    )
    assert b"cost center,CC-200" in csv_export.data and b"CC-999" not in csv_export.data
    assert csv_export.filename.startswith("statement-CC-200-2026-10-r1")
    pdf = exports.export(actor=admin, department_id=department.pk, month="2026-10", fmt="pdf")
    text = _pdf_text(pdf.data)
    assert "(CC-200)" in text and "CC-999" not in text
    event = AuditEvent.objects.filter(action="statement.export").latest("sequence")
    assert (event.after or {}).get("department") == "CC-200"
    assert stored.cost_center == "CC-200" and stored.department.cost_center == "CC-999"

    # A revision issued after the rename is written under the cost center of its time.
    fresh = statements.reissue(admin, stored, "the rename is recorded from now on")
    assert fresh.cost_center == "CC-999" and statements.verify(fresh)
    assert statements.verify(Statement.objects.get(pk=closed.pk))


def test_the_api_reports_a_closed_statement_under_the_cost_center_it_was_written_under(
    client, org, called, other_team
):
    """Before, the API's rows named the department's cost center of now beside a sha256 covering the old one,
    and a filter by the cost center on the PDF finance holds found nothing."""
    department = other_team.department
    closed = statements.close(BILLING, department, OCTOBER)
    update_department(
        actor=actor_for(org["admin"]), department=department, name=department.name, cost_center="CC-999"
    )
    client.force_login(org["admin"])
    for cost_center in ("CC-200", "CC-999"):  # as written, and as the department is called now
        listed = client.get(f"/api/v1/billing/statements?month=2026-10&department={cost_center}").json()
        assert [(row["id"], row["cost_center"]) for row in listed["items"]] == [(closed.pk, "CC-200")]
    detail = client.get("/api/v1/billing/statements/CC-999/2026-10?revision=1").json()
    assert (detail["cost_center"], detail["sha256"]) == ("CC-200", closed.sha256)


def test_postgresql_refuses_a_line_added_to_a_closed_statement(called, other_team):
    statement = statements.close(BILLING, other_team.department, OCTOBER)
    count = StatementLine.objects.filter(statement=statement).count()
    assert count == statement.line_count > 0
    for position in (count + 1, count, 0, 1_000):  # after its lines, over one, before them, far off
        with (
            pytest.raises(DatabaseError, match="immutable"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(ADD_LINE, [statement.pk, position])
    assert StatementLine.objects.filter(statement=statement).count() == count
    assert statements.verify(Statement.objects.get(pk=statement.pk))


def test_a_statement_closed_with_no_lines_cannot_gain_one(org, team):
    statement = statements.close(BILLING, team.department, OCTOBER)
    assert statement.line_count == 0
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ADD_LINE, [statement.pk, 1])


def test_closing_and_reissuing_still_write_every_line(org, called, team, other_team):
    first = statements.close(BILLING, other_team.department, OCTOBER)
    # Late usage at the price in force from the 16th: a line more in the re-issue.
    tokens("2026-10-20 12:00", endpoint_id=11, endpoint="router", owner=team, caller=other_team,
           tokens_in=2_000_000)  # fmt: skip
    fresh = statements.reissue(actor_for(org["admin"]), first, "late usage of October arrived")
    assert fresh.line_count == StatementLine.objects.filter(statement=fresh).count() > first.line_count
    assert statements.verify(fresh) and statements.verify(Statement.objects.get(pk=first.pk))
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ADD_LINE, [fresh.pk, fresh.line_count + 1])


def test_one_team_under_two_names_is_one_group_on_a_statements_sheet(other_team):
    """A re-issue keeps its adjustments for earlier months under the team name they were written with and
    writes its charges under today's: the PDF showed such a team twice, each with a subtotal of its own."""
    from types import SimpleNamespace

    from django.utils import timezone

    from portfolio.billing.sheets import Sheet

    def line(team_id, team, amount):
        return SimpleNamespace(team_id=team_id, team=team, amount=Decimal(amount))

    lines = [line(2, "Contracts (renamed)", "5.00"), line(3, "Legal", "1.00"), line(2, "Contracts", "-2.00")]
    sheet = Sheet(other_team.department, OCTOBER, 2, "closed", "EUR", "", lines, False, timezone.now())
    assert [(team, subtotal) for team, _, subtotal in sheet.by_team()] == [
        ("Contracts (renamed)", Decimal("3.00")),
        ("Legal", Decimal("1.00")),
    ]
