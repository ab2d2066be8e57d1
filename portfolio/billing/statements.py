"""Statements: a department's month, drafted live from the ledger, closed once, re-issued only as a new
revision with a reason.

Late usage never changes a closed statement. The draft (and, at its close, the statement) of a month
carries an **adjustment line** per team for each of the ``BILLING_ADJUSTMENT_MONTHS`` closed months before
it whose charges, computed again from the ledger now, differ from what was billed for that month: its own
closed lines plus the adjustments for it already on later closed statements. The ledger stays the truth,
and adjustments converge on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department, Team
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.billing import money, pricing
from portfolio.billing.charges import Line, charges_of
from portfolio.billing.choices import LineKind, StatementStatus
from portfolio.billing.models import Statement, StatementLine
from portfolio.errors import Conflict, Invalid

logger = logging.getLogger(__name__)
ZERO = Decimal("0.00")


def label(month: date) -> str:
    return month.strftime("%Y-%m")


def previous_month(month: date) -> date:
    return money.month_start(month - timedelta(days=1))


def _totals(pairs) -> dict[int | None, Decimal]:
    totals: dict[int | None, Decimal] = {}
    for team_id, amount in pairs:
        totals[team_id] = totals.get(team_id, ZERO) + amount
    return totals


def _billed(closed: dict[int, Statement], before: date) -> dict[int, dict[int | None, Decimal]]:
    """What was billed for the closed statements' month, per department and team: their own lines, and
    adjustments for that month on the closed statements of later months before ``before``."""
    if not closed:
        return {}
    month = next(iter(closed.values())).month
    own = (
        StatementLine.objects.filter(statement_id__in=[s.pk for s in closed.values()])
        # Its adjustments for earlier months are those months' (a re-issue's credit for itself is its own).
        .exclude(Q(kind=LineKind.ADJUSTMENT) & ~Q(subject=label(month)))
        .values_list("statement__department_id", "team_id")
        .annotate(total=Sum("amount"))
    )
    later = (
        StatementLine.objects.filter(
            statement__department_id__in=list(closed),
            statement__status=StatementStatus.CLOSED,
            statement__month__gt=month,
            statement__month__lt=before,
            kind=LineKind.ADJUSTMENT,
            subject=label(month),
        )
        .values_list("statement__department_id", "team_id")
        .annotate(total=Sum("amount"))
    )
    billed: dict[int, dict[int | None, Decimal]] = {}
    for department_id, team_id, amount in [*own, *later]:
        teams = billed.setdefault(department_id, {})
        teams[team_id] = teams.get(team_id, ZERO) + amount
    return billed


def adjustments_of(department_ids: set[int], month: date, as_of: datetime) -> dict[int, list[Line]]:
    """Per department: an adjustment line per team and closed earlier month whose charges changed since
    they were billed. Each earlier month is computed once for all the departments that closed it."""
    lines: dict[int, list[Line]] = {}
    earlier = month
    for _ in range(settings.BILLING_ADJUSTMENT_MONTHS):
        earlier = previous_month(earlier)
        closed = {
            s.department_id: s
            for s in Statement.objects.current().filter(department_id__in=department_ids, month=earlier)
        }
        if not closed:
            continue
        _, end = money.month_bounds(earlier)
        now: dict[int, dict[int | None, Decimal]] = {}
        for line in charges_of(set(closed), earlier, max(as_of, end)):
            teams = now.setdefault(line.department_id or 0, {})
            teams[line.team_id] = teams.get(line.team_id, ZERO) + line.amount
        billed = _billed(closed, month)
        detail = f"usage of {label(earlier)} recorded after that month closed"
        for department_id in sorted(closed):
            charged, paid = now.get(department_id, {}), billed.get(department_id, {})
            for team_id in sorted(set(charged) | set(paid), key=lambda t: t or 0):
                delta = charged.get(team_id, ZERO) - paid.get(team_id, ZERO)
                if delta:
                    lines.setdefault(department_id, []).append(
                        Line(
                            department_id,
                            team_id,
                            LineKind.ADJUSTMENT,
                            label(earlier),
                            detail,
                            "month",
                            delta,
                            Fraction(1),
                            Fraction(delta),
                        )  # fmt: skip
                    )
    return lines


def compute_of(department_ids: set[int], month: date, as_of: datetime | None = None) -> dict[int, list[Line]]:
    """The lines of each department's month as the ledger has it now (charges, then adjustments), all the
    departments in one pass over the ledger."""
    if not department_ids:
        return {}
    as_of = as_of or timezone.now()
    lines: dict[int, list[Line]] = {department_id: [] for department_id in department_ids}
    for line in charges_of(department_ids, month, as_of):
        lines[line.department_id or 0].append(line)
    for department_id, adjusted in adjustments_of(department_ids, month, as_of).items():
        lines[department_id] += adjusted
    everything = [line for department_lines in lines.values() for line in department_lines]
    names = dict(Team.objects.filter(pk__in={line.team_id for line in everything}).values_list("pk", "name"))
    for line in everything:
        line.team = names.get(line.team_id or 0, f"team {line.team_id}" if line.team_id else "no team")
    return lines


def compute(department: Department, month: date, as_of: datetime | None = None) -> list[Line]:
    """The lines of the department's month as the ledger has it now: charges, then adjustments."""
    return compute_of({department.pk}, month, as_of)[department.pk]


@dataclass
class Draft:
    """A month of a department: its closed revision in force if there is one, else computed now."""

    department: Department
    month: date
    lines: list  # Line or StatementLine: both have team_id, team, kind, subject, detail, quantity, ...
    statement: Statement | None = None

    @property
    def closed(self) -> bool:
        return self.statement is not None

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), ZERO)

    def by_team(self) -> dict[int | None, Decimal]:
        return _totals((line.team_id, line.amount) for line in self.lines)


def drafts_of(
    departments: Iterable[Department], month: date, as_of: datetime | None = None
) -> dict[int, Draft]:
    """Each department's month: its closed revision in force, else its lines computed now (those in one
    pass over the ledger, whatever their number)."""
    departments = list(departments)
    closed = {
        s.department_id: s
        for s in Statement.objects.current()
        .filter(department_id__in=[d.pk for d in departments], month=month)
        .prefetch_related("lines")
    }
    computed = compute_of({d.pk for d in departments if d.pk not in closed}, month, as_of)
    return {
        d.pk: Draft(d, month, list(closed[d.pk].lines.all()), closed[d.pk])
        if d.pk in closed
        else Draft(d, month, computed[d.pk])
        for d in departments
    }


def month_of(department: Department, month: date, as_of: datetime | None = None) -> Draft:
    return drafts_of([department], month, as_of)[department.pk]


def _fixed(value, places: int) -> str:
    """A number as its column stores it, whatever the exponent it was computed with (1.5 and 1.500000 are
    "1.50" as an amount), and no negative zero: what is read back from the table hashes the same."""
    return f"{Decimal(value) + 0:.{places}f}"


def digest(header: dict, lines: list) -> str:
    """sha256 of the canonical JSON of a statement's header and lines (what its audit row and exports carry),
    numbers at their columns' places: recomputed from the stored statement, it is the same (``verify``)."""
    body = {
        **header,
        "total": _fixed(header["total"], 2),
        "lines": [
            {
                "team": line.team,
                "kind": str(line.kind),
                "subject": line.subject,
                "detail": line.detail,
                "quantity": _fixed(line.quantity, 9),
                "unit": line.unit,
                "unit_price": _fixed(line.unit_price, 6),
                "amount": _fixed(line.amount, 2),
            }
            for line in lines
        ],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify(statement: Statement) -> bool:
    """Whether a stored statement's lines and header still hash to its ``sha256`` (as an auditor would check
    it from an export). Statements closed before 2026-12-05 hashed numbers as computed, and may not."""
    # The cost center stored with it, not the department's now: a renamed one leaves it as it was closed.
    header = _header(statement.cost_center, statement.month, statement.revision, statement.total)
    return digest(header | {"currency": statement.currency}, list(statement.lines.order_by("position"))) == (
        statement.sha256
    )


def _header(cost_center: str, month: date, revision: int, total: Decimal) -> dict:
    return {
        "department": cost_center,
        "month": label(month),
        "revision": revision,
        "currency": settings.BILLING_CURRENCY,
        "total": str(total),
    }


def _write(
    actor: Actor, department: Department, month: date, revision: int, reason: str, lines: list
) -> Statement:
    total = sum((line.amount for line in lines), ZERO)
    statement = Statement.objects.create(
        department=department,
        cost_center=department.cost_center,
        month=month,
        revision=revision,
        currency=settings.BILLING_CURRENCY,
        total=total,
        sha256=digest(_header(department.cost_center, month, revision, total), lines),
        closed_by=actor.label,
        reason=reason,
        line_count=len(lines),  # PostgreSQL refuses any line past these (migration 0009)
    )
    StatementLine.objects.bulk_create(
        StatementLine(
            statement=statement,
            position=position,
            team_id=line.team_id,
            team=line.team,
            kind=line.kind,
            subject=line.subject[:150],
            detail=line.detail[:200],
            quantity=line.quantity,
            unit=line.unit,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for position, line in enumerate(lines, start=1)
    )
    return statement


@transaction.atomic
def close(actor: Actor, department: Department, month: date) -> Statement:
    """Close a finished month: its statement is written once, its hash goes into the audit trail."""
    gate.require(actor, "statement.reissue")  # only the system (and admins) close months
    if month >= money.month_start(timezone.now()):
        raise Invalid(f"{label(month)} has not ended yet.")
    # One closer per department at a time; its cost center as it is now, locked (a rename waits for it).
    department = Department.objects.select_for_update().get(pk=department.pk)
    pricing.hold_price_book(exclusive=False)  # no price version of the month commits while it closes
    if Statement.objects.filter(department=department, month=month).exists():
        raise Conflict(f"{label(month)} of {department.cost_center} is already closed.")
    statement = _write(actor, department, month, 1, "", compute(department, month))
    audit.record(actor, AuditAction.STATEMENT_CLOSE, statement, after=statement.snapshot())
    return statement


def _reissued_lines(current: Statement) -> list[Line]:
    """A re-issued month's lines: its charges as the ledger has them now; its adjustments for earlier months
    as it billed them (they belong to the month it closed, and later statements have adjusted those months
    since: computed again, they would be billed twice); and, per team, a credit for what later closed
    statements already billed for this month as adjustments (late usage the new charges now hold too).
    With them, what was billed for the month (``_billed``) still meets the ledger: no double charge, and
    nothing left for the next draft to correct."""
    month, department_id = current.month, current.department_id
    lines = [line for line in compute(current.department, month) if line.kind != LineKind.ADJUSTMENT]
    for kept in (
        current.lines.filter(kind=LineKind.ADJUSTMENT).exclude(subject=label(month)).order_by("position")
    ):
        lines.append(
            Line(
                department_id,
                kept.team_id,
                kept.kind,
                kept.subject,
                kept.detail,
                kept.unit,
                kept.unit_price,
                Fraction(kept.quantity),
                Fraction(kept.amount),
                team=kept.team,
            )  # fmt: skip
        )
    later = (
        StatementLine.objects.filter(
            statement__department_id=department_id,
            statement__status=StatementStatus.CLOSED,
            statement__month__gt=month,
            kind=LineKind.ADJUSTMENT,
            subject=label(month),
        )
        .values_list("team_id", "team")
        .annotate(total=Sum("amount"))
        .order_by("team_id")
    )
    for team_id, team, amount in later:
        if amount:
            lines.append(
                Line(
                    department_id,
                    team_id,
                    LineKind.ADJUSTMENT,
                    label(month),
                    "billed already as adjustments on later statements",
                    "month",
                    -amount,
                    Fraction(1),
                    Fraction(-amount),
                    team=team,
                )  # fmt: skip
            )
    return lines


@transaction.atomic
def reissue(actor: Actor, statement: Statement, reason: str) -> Statement:
    """A new revision of a closed statement, its charges computed from the ledger now; the old one is kept,
    superseded. See ``_reissued_lines`` for what it carries besides."""
    gate.require(actor, "statement.reissue")
    reason = (reason or "").strip()
    if not 10 <= len(reason) <= 2000:
        raise Invalid("Say why the statement is re-issued (10 to 2,000 characters).")
    # Locked as close locks it, first: a later month closing meanwhile would read this month as billed
    # before the re-issue and adjust it for late usage the re-issue bills as well.
    department = Department.objects.select_for_update().get(pk=statement.department_id)
    pricing.hold_price_book(exclusive=False)
    current = (
        Statement.objects.select_for_update(of=("self",))  # its department is locked above, on purpose
        .filter(department_id=statement.department_id, month=statement.month, status=StatementStatus.CLOSED)
        .first()
    )
    if current is None or current.pk != statement.pk:
        raise Conflict("Only the revision in force can be re-issued.")
    lines = _reissued_lines(current)
    Statement.objects.filter(pk=current.pk).update(status=StatementStatus.SUPERSEDED)
    fresh = _write(actor, department, statement.month, current.revision + 1, reason, lines)
    audit.record(
        actor, AuditAction.STATEMENT_REISSUE, fresh, before=current.snapshot(), after=fresh.snapshot()
    )
    return fresh


def months_to_close(department: Department, now: datetime) -> list[date]:
    """Finished months of the department (since it was created, at most a year back) not closed yet,
    oldest first; a month is finished ``BILLING_CLOSE_AFTER_HOURS`` after it ends (late usage settles)."""
    grace = timedelta(hours=settings.BILLING_CLOSE_AFTER_HOURS)
    first = max(money.month_start(department.created_at), money.month_start(now - timedelta(days=366)))
    closed = set(Statement.objects.filter(department=department).values_list("month", flat=True))
    months, month = [], first
    while money.month_bounds(month)[1] + grace <= now:
        if month not in closed:
            months.append(month)
        month = money.next_month(month)
    return months


def close_finished(now: datetime | None = None) -> list[Statement]:
    """The beat task's work: close every finished month of every department, oldest first; what was closed.
    Each department closes on its own: one whose close fails (a concurrent close, lines that cannot be
    computed) is logged and retried by the next run, and the departments after it still close."""
    now = now or timezone.now()
    actor = Actor.for_system("billing")
    closed = []
    for department in Department.objects.order_by("pk"):
        for month in months_to_close(department, now):
            try:
                closed.append(close(actor, department, month))
            except Exception:
                logger.exception("billing: closing %s of %s failed", label(month), department.cost_center)
                break  # its later months wait for this one: a department's months close oldest first
    return closed
