"""What one reader sees of billing: a month's spend per department, team and subject with its forecast and
days, the statements they may read, and one statement's lines. For the REST API and the billing pages.

A reader who reads a department only through the teams they own (``access.Reader``) gets only those
teams' lines and amounts, and every total made of them is flagged ``partial``.

**Forecast**: the run rate. Spend so far divided by the elapsed fraction of the month
(``(as_of - month start) / (month end - month start)``), rounded to the cent; a finished month's
forecast is its spend; in the month's first hour there is no forecast (too little to extrapolate from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db.models import Q, Sum

from portfolio.accounts.models import Department, Team
from portfolio.billing import daily, money
from portfolio.billing.access import Reader
from portfolio.billing.choices import LineKind, StatementStatus
from portfolio.billing.models import Statement, StatementLine
from portfolio.billing.statements import ZERO, Draft, drafts_of, label, month_of

DRAFT = "draft"
MICROSECOND = timedelta(microseconds=1)


def forecast(spend: Decimal, month: date, as_of: datetime, adjustments: Decimal = ZERO) -> Decimal | None:
    """The month's spend at its end, at the rate so far. ``adjustments`` (part of ``spend``: corrections of
    earlier months) do not grow with the month: they are added as they are, not extrapolated."""
    start, end = money.month_bounds(month)
    if as_of >= end:
        return spend
    elapsed = (as_of - start) // MICROSECOND
    if elapsed < timedelta(hours=1) // MICROSECOND:
        return None
    return money.cents(Fraction(spend - adjustments) * Fraction((end - start) // MICROSECOND, elapsed)) + (
        adjustments
    )


def _adjustments(lines) -> Decimal:
    return sum((line.amount for line in lines if line.kind == LineKind.ADJUSTMENT), ZERO)


def readable_departments(reader: Reader):
    ids = reader.department_ids()
    departments = Department.objects.order_by("name", "id")
    return departments if ids is None else departments.filter(pk__in=ids)


def visible_lines(reader: Reader, draft: Draft) -> tuple[list, bool]:
    """The draft's lines the reader may read, and whether that is only part of them."""
    teams = reader.team_filter(draft.department.pk)
    if teams is None:
        return draft.lines, False
    return [line for line in draft.lines if line.team_id in teams], True


@dataclass
class Row:
    """One department, team or subject of a month's spend."""

    key: tuple
    name: str
    spend: Decimal = ZERO
    forecast: Decimal | None = None
    partial: bool = False
    days: list[Decimal] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    department_id: int | None = None
    kind: str = ""
    audio_seconds: list[Decimal] = field(default_factory=list)  # speech calls: billed by the second
    adjustments: Decimal = ZERO  # of ``spend``: corrections of earlier months, not extrapolated


@dataclass
class MonthSpend:
    month: date
    as_of: datetime
    elapsed: float
    currency: str
    total: Decimal
    forecast: Decimal | None
    partial: bool
    days: list[date]
    day_totals: list[Decimal]
    day_tokens: list[int]
    day_audio_seconds: list[Decimal]
    day_compute: list[Decimal]  # the compute and storage part of each day's total
    departments: list[Row]
    teams: list[Row]
    subjects: list[Row]


def month_spend(reader: Reader, month: date, now: datetime, *, team_days: bool = True) -> MonthSpend:
    """The reader's part of ``month`` up to ``now`` (all of it for a finished month); each team's days
    only if ``team_days`` (the API's; the page charts the whole)."""
    start, end = money.month_bounds(month)
    as_of = min(now, end)
    departments = list(readable_departments(reader))
    days = daily.series(month, as_of, [d.pk for d in departments])
    team_names = dict(
        Team.objects.filter(department_id__in=[d.pk for d in departments]).values_list("pk", "name")
    )
    rows_d: list[Row] = []
    rows_t: dict[tuple, Row] = {}  # (department, team) -> its row
    rows_s: dict[tuple, Row] = {}  # (department, line kind, subject) -> its row
    all_cells: list[daily.Cell] = []
    drafts = drafts_of(departments, month, as_of)
    cells_of: dict[int, list[daily.Cell]] = {}
    for cell in days.cells():
        cells_of.setdefault(cell[0], []).append(cell)
    for department in departments:
        lines, partial = visible_lines(reader, drafts[department.pk])
        spend = sum((line.amount for line in lines), ZERO)
        allowed = reader.team_filter(department.pk)
        cells = [c for c in cells_of.get(department.pk, ()) if allowed is None or c[1] in allowed]
        all_cells += cells
        amounts, tokens = days.total(cells)
        rows_d.append(
            Row(
                (department.pk,),
                department.name,
                spend,
                forecast(spend, month, as_of, _adjustments(lines)),
                partial,
                amounts,
                tokens,
                department.pk,
                audio_seconds=days.audio_seconds(cells),
                adjustments=_adjustments(lines),
            )  # fmt: skip
        )
        for line in lines:
            key = (department.pk, line.team_id)
            team = rows_t.get(key)
            if team is None:
                name = team_names.get(line.team_id, line.team)
                team = rows_t[key] = Row((line.team_id,), name, department_id=department.pk)
            team.spend += line.amount
            team.adjustments += _adjustments([line])
            about = (department.pk, line.kind, line.subject)
            subject = rows_s.get(about)
            if subject is None:
                subject = rows_s[about] = Row(
                    (line.kind, line.subject), line.subject, department_id=department.pk, kind=line.kind
                )
            subject.spend += line.amount
        for team_id in {c[1] for c in cells}:
            if (department.pk, team_id) not in rows_t:
                name = team_names.get(team_id or 0, "no team")
                rows_t[(department.pk, team_id)] = Row((team_id,), name, department_id=department.pk)
    for team in rows_t.values():
        team.forecast = forecast(team.spend, month, as_of, team.adjustments)
        if team_days:
            cell = (team.department_id or 0, team.key[0])
            team.days, team.tokens = days.total([cell])
            team.audio_seconds = days.audio_seconds([cell])
    total = sum((row.spend for row in rows_d), ZERO)
    day_totals, day_tokens = days.total(all_cells)
    return MonthSpend(
        month=month,
        as_of=as_of,
        elapsed=min(1.0, (as_of - start) / (end - start)),
        currency=settings.BILLING_CURRENCY,
        total=total,
        forecast=forecast(total, month, as_of, sum((row.adjustments for row in rows_d), ZERO)),
        partial=any(row.partial for row in rows_d),
        days=days.days,
        day_totals=day_totals,
        day_tokens=day_tokens,
        day_audio_seconds=days.audio_seconds(all_cells),
        day_compute=days.compute_total(all_cells),
        departments=rows_d,
        teams=sorted(rows_t.values(), key=lambda r: (-r.spend, r.name)),
        subjects=sorted(rows_s.values(), key=lambda r: (-r.spend, r.kind, r.name)),
    )


# --- Statements -------------------------------------------------------------------------------------
@dataclass
class StatementRow:
    """A stored revision, or the current month's draft (id None, status ``draft``)."""

    id: int | None
    department_id: int
    department: str
    cost_center: str
    month: str
    revision: int | None
    status: str
    currency: str
    total: Decimal
    sha256: str
    closed_at: datetime | None
    partial: bool


def _stored(reader: Reader, *, cost_center: str = "", month: date | None = None, status: str = ""):
    query = Statement.objects.select_related("department").order_by(
        "-month", "department__name", "department_id", "-revision"
    )
    ids = reader.department_ids()
    if ids is not None:
        query = query.filter(department_id__in=ids)
    if cost_center:
        # The cost center a statement was written under (what its exports and hash say), or its department's now.
        query = query.filter(Q(cost_center=cost_center) | Q(department__cost_center=cost_center))
    if month is not None:
        query = query.filter(month=month)
    if status:
        query = query.filter(status=status)
    return query


def statements(
    reader: Reader, now: datetime, *, offset: int, limit: int, cost_center: str = "",
    month: date | None = None, status: str = "",
) -> tuple[int, list[StatementRow]]:  # fmt: skip
    """One page of: the current month's drafts (one per readable department), then the stored revisions,
    newest month first. Drafts are computed only for the page they fall on."""
    current = money.month_start(now)
    drafts = readable_departments(reader)
    if cost_center:
        drafts = drafts.filter(cost_center=cost_center)
    if (month is not None and month != current) or status not in ("", DRAFT):
        drafts = drafts.none()
    stored = _stored(reader, cost_center=cost_center, month=month, status=status)
    if status == DRAFT:
        stored = stored.none()
    draft_count = drafts.count()
    rows: list[StatementRow] = []
    page_drafts = list(drafts[offset : offset + limit])
    computed = drafts_of(page_drafts, current, now)
    for department in page_drafts:
        lines, partial = visible_lines(reader, computed[department.pk])
        rows.append(
            StatementRow(
                None,
                department.pk,
                department.name,
                department.cost_center,
                label(current),
                None,
                DRAFT,
                settings.BILLING_CURRENCY,
                sum((line.amount for line in lines), ZERO),
                "",
                None,
                partial,
            )  # fmt: skip
        )
    start = max(0, offset - draft_count)
    page = list(stored[start : start + limit - len(rows)]) if len(rows) < limit else []
    partial_totals = _partial_totals(reader, page)
    for statement in page:
        partial = reader.team_filter(statement.department_id) is not None
        rows.append(stored_row(statement, partial=partial, total=partial_totals.get(statement.pk, ZERO)))
    return draft_count + stored.count(), rows


def stored_row(statement: Statement, *, partial: bool, total: Decimal | None = None) -> StatementRow:
    """A stored revision as a row; ``total`` replaces its own where the reader reads it only in part."""
    return StatementRow(
        statement.pk, statement.department_id, statement.department.name, statement.cost_center,
        label(statement.month), statement.revision, statement.status, statement.currency,
        total if partial and total is not None else statement.total, statement.sha256, statement.closed_at,
        partial,
    )  # fmt: skip


def _partial_totals(reader: Reader, page: list[Statement]) -> dict[int, Decimal]:
    """The totals of the reader's own teams' lines on the statements they read only in part: one query."""
    partial = [s.pk for s in page if reader.team_filter(s.department_id) is not None]
    if not partial:
        return {}
    return dict(
        StatementLine.objects.filter(statement_id__in=partial, team_id__in=list(reader.teams))
        .values_list("statement_id")
        .annotate(total=Sum("amount"))
        .values_list("statement_id", "total")
    )


def statement(reader: Reader, department: Department, month: date, now: datetime, revision: int | None):
    """A department's month as the reader may read it: (header row, lines); a stored ``revision`` if
    asked for, else the revision in force or the live draft. None when there is no such revision."""
    if revision is not None:
        stored = Statement.objects.filter(department=department, month=month, revision=revision).first()
        if stored is None:
            return None
        draft = Draft(department, month, list(stored.lines.all()), stored)
    else:
        draft = month_of(department, month, min(now, money.month_bounds(month)[1]))
    lines, partial = visible_lines(reader, draft)
    stored = draft.statement
    header = StatementRow(
        stored.pk if stored else None, department.pk, department.name,
        stored.cost_center if stored else department.cost_center,
        label(month), stored.revision if stored else None, stored.status if stored else DRAFT,
        stored.currency if stored else settings.BILLING_CURRENCY,
        sum((line.amount for line in lines), ZERO) if partial or not stored else stored.total,
        stored.sha256 if stored else "", stored.closed_at if stored else None, partial,
    )  # fmt: skip
    return header, lines


STATUSES = (DRAFT, *StatementStatus.values)
