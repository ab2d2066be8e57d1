"""REST endpoints of billing, under /api/v1/billing: the price book, a month's spend, statements.

Who reads what is ``billing.access``: admins and auditors everything, a department manager their
departments whole, a team owner their own teams' lines only (totals made of them are flagged
``partial``). A signed-in caller who reads no billing at all gets 403 on the lists; a department,
statement or month they may not read is 404, as if it did not exist. Prices are set and statements
re-issued by platform admins only (403 for the rest of those who can see them).

Months are ``YYYY-MM`` (UTC calendar months); a month that has not begun is refused. Every list is
paginated (``page``, ``page_size`` up to ``MAX_PAGE_SIZE``; more is a 422, not a silent cut) and ordered.
"""

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from django.utils import timezone
from ninja import Query, Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.billing import access, money, overview, statements, subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price, Statement
from portfolio.billing.pricing import PriceBook
from portfolio.billing.services import MAX_RATE, set_price
from portfolio.errors import Invalid, NotFound

router = Router(tags=["billing"])

MAX_PAGE_SIZE = 200
MAX_PAGE = 1_000_000
TOP_SUBJECTS = 100  # the spend's largest subjects; the statements have every line
COST_CENTER = re.compile(r"^[A-Z0-9][A-Z0-9\-]{1,31}\Z")


class Pages(PageNumberPagination):
    """Page numbers with a bounded page size: asking for more than ``MAX_PAGE_SIZE`` is an error."""

    class Input(Schema):
        page: int = Field(1, ge=1, le=MAX_PAGE)
        page_size: int | None = Field(None, ge=1, le=MAX_PAGE_SIZE)


def _reader(request) -> access.Reader:
    # Anyone who reads some billing (admin, auditor, a manager, a team owner); others are refused here.
    gate.require(request.auth, "billing.view")
    return access.reader(request.auth)


# --- Price book ------------------------------------------------------------------------------------
Rate = Annotated[
    Decimal,
    Field(ge=0, le=MAX_RATE, max_digits=16, decimal_places=6, description="Per unit, in the currency."),
]


class PriceOut(Schema):
    id: int
    kind: PriceKind
    subject_id: str
    subject_name: str
    effective_from: datetime
    rates: dict[str, Decimal]
    note: str
    created_at: datetime
    created_by: str | None

    @staticmethod
    def resolve_rates(price: Price) -> dict[str, Decimal]:
        return price.rates()

    @staticmethod
    def resolve_created_by(price: Price) -> str | None:
        return price.created_by.get_username() if price.created_by else None


class PriceIn(Schema):
    """A new version of a subject's prices. Rates left out keep the value in force at ``effective_from``.
    Endpoints: input/output per million tokens, per second of audio; pools: per GPU-, CPU-core-, memory-GiB-hour; stores: per
    GiB-month."""

    kind: PriceKind
    subject: str = Field(min_length=1, max_length=100, description="The endpoint's, pool's or store's name.")
    effective_from: datetime | None = Field(
        None,
        description="On the hour, in a month still open; without a zone, UTC. Default: the start of the next hour.",
    )
    note: str = Field("", max_length=200)
    input_per_million: Rate | None = None
    output_per_million: Rate | None = None
    audio_second: Rate | None = None
    gpu_hour: Rate | None = None
    cpu_core_hour: Rate | None = None
    memory_gib_hour: Rate | None = None
    gib_month: Rate | None = None


class PriceQuery(Schema):
    kind: PriceKind | None = None
    subject: str = Field("", max_length=100, description="A subject's name, exactly.")


class SubjectOut(Schema):
    """Something the price book can price, with the version in force now (null: unpriced)."""

    kind: PriceKind
    id: str
    name: str
    rates: dict[str, Decimal] | None
    effective_from: datetime | None


@router.get("/prices", response=list[PriceOut])
@paginate(Pages, page_size=50)
def list_prices(request, filters: Query[PriceQuery]):
    """Every version, by kind and subject, newest first."""
    _reader(request)
    prices = Price.objects.select_related("created_by")
    if filters.kind:
        prices = prices.filter(kind=filters.kind)
    if filters.subject:
        prices = prices.filter(subject_name=filters.subject)
    return prices.order_by("kind", "subject_name", "subject_id", "-effective_from", "-id")


@router.post("/prices", response={201: PriceOut})
def create_price(request, payload: PriceIn):
    """Platform admins; audited as ``price.set`` with the version before and after."""
    gate.require(request.auth, "price.manage")
    subject = subjects.find(payload.kind, payload.subject)
    if subject is None:
        message = f"No {PriceKind(payload.kind).label.lower()} subject named {payload.subject!r}."
        raise Invalid(f"subject: {message}", fields={"subject": [message]})
    effective_from = payload.effective_from
    if effective_from is not None and timezone.is_naive(effective_from):
        effective_from = effective_from.replace(tzinfo=UTC)
    rates = {
        name: value
        for name, value in payload.dict(exclude={"kind", "subject", "effective_from", "note"}).items()
        if value is not None
    }
    price = set_price(
        actor=request.auth, subject=subject, effective_from=effective_from, note=payload.note, **rates
    )
    return Status(201, Price.objects.select_related("created_by").get(pk=price.pk))


@router.get("/prices/subjects", response=list[SubjectOut])
@paginate(Pages, page_size=100)
def list_subjects(request, kind: PriceKind | None = None):
    """What can be priced (endpoints, pools, stores), by kind and name, with the price in force now: those
    the caller may see (their teams' endpoints, the pools open to them; everything for org-wide roles), and
    every subject with a price, as the price book shows every reader (the organisation's list)."""
    _reader(request)
    kinds = [kind] if kind else list(PriceKind.values)
    book = PriceBook.load(kinds=kinds)
    now = timezone.now()
    found = []
    for each in kinds:
        shown = set(book.subjects(each)) | {s.id for s in subjects.listing(each, request.auth)}
        for subject in subjects.listing(each):
            if subject.id not in shown:
                continue  # another team's, unpriced: not even its name is the caller's to learn
            price = book.at(each, subject.id, now)
            found.append(
                {
                    "kind": each,
                    "id": subject.id,
                    "name": subject.name,
                    "rates": price.rates() if price else None,
                    "effective_from": price.effective_from if price else None,
                }
            )
    return sorted(found, key=lambda s: (s["kind"], s["name"], s["id"]))


# --- Spend -----------------------------------------------------------------------------------------
class DepartmentSpendOut(Schema):
    id: int
    name: str
    spend: Decimal
    forecast: Decimal | None
    partial: bool = Field(description="Only the caller's own teams' part of the department.")
    days: list[Decimal] = Field(description="Per day of `days`: priced tokens, compute and storage.")
    tokens: list[int] = Field(description="Tokens its teams called per day of `days`.")
    audio_seconds: list[Decimal] = Field(
        description="Seconds of audio its teams sent to speech models per day of `days` (billed by the "
        "second: those calls have no tokens)."
    )


class TeamSpendOut(Schema):
    id: int | None = Field(description="null: usage of no team (the prompt box).")
    name: str
    department_id: int
    spend: Decimal
    forecast: Decimal | None
    days: list[Decimal]
    tokens: list[int]
    audio_seconds: list[Decimal]


class SubjectSpendOut(Schema):
    department_id: int
    kind: str = Field(
        description="The line kind: tokens, credit, at_cost, replica, job, storage, adjustment."
    )
    subject: str = Field(description="Endpoint, deployment, job, store, or the month adjusted.")
    spend: Decimal


class SpendOut(Schema):
    """A month's spend so far of what the caller reads. ``forecast``: the run rate to the month's end
    (spend / elapsed fraction of the month); null in its first hour. ``days`` and the day series hold
    priced tokens, compute and storage per day; at-cost shares and adjustments have no day:
    ``not_in_days`` is the month's total minus the days' sum (per-day rounding included)."""

    month: str
    as_of: datetime
    elapsed_fraction: float
    currency: str
    total: Decimal
    forecast: Decimal | None
    partial: bool
    days: list[date]
    day_totals: list[Decimal]
    day_tokens: list[int]
    day_audio_seconds: list[Decimal]
    not_in_days: Decimal
    departments: list[DepartmentSpendOut]
    teams: list[TeamSpendOut]
    subjects: list[SubjectSpendOut] = Field(description=f"The {TOP_SUBJECTS} largest, by spend.")


@router.get("/spend", response=SpendOut)
def get_spend(request, month: str | None = Query(None, max_length=7, description="YYYY-MM; default: now")):
    reader = _reader(request)
    now = timezone.now()
    spend = overview.month_spend(reader, money.parse_month(month, now), now)
    return {
        "month": statements.label(spend.month),
        "as_of": spend.as_of,
        "elapsed_fraction": spend.elapsed,
        "currency": spend.currency,
        "total": spend.total,
        "forecast": spend.forecast,
        "partial": spend.partial,
        "days": spend.days,
        "day_totals": spend.day_totals,
        "day_tokens": spend.day_tokens,
        "day_audio_seconds": spend.day_audio_seconds,
        "not_in_days": spend.total - sum(spend.day_totals, Decimal("0.00")),
        "departments": [_spend_row(row, id=row.key[0]) for row in spend.departments],
        "teams": [_spend_row(row, id=row.key[0], department_id=row.department_id) for row in spend.teams],
        "subjects": [
            {"department_id": row.department_id, "kind": row.kind, "subject": row.name, "spend": row.spend}
            for row in spend.subjects[:TOP_SUBJECTS]
        ],
    }


def _spend_row(row: overview.Row, **extra: Any) -> dict:
    return {
        "name": row.name,
        "spend": row.spend,
        "forecast": row.forecast,
        "partial": row.partial,
        "days": row.days,
        "tokens": row.tokens,
        "audio_seconds": row.audio_seconds,
        **extra,
    }


# --- Statements ------------------------------------------------------------------------------------
class StatementOut(Schema):
    id: int | None = Field(description="null for the current month's draft (never stored).")
    department_id: int
    department: str
    cost_center: str
    month: str
    revision: int | None
    status: str = Field(description="draft, closed (the revision in force) or superseded.")
    currency: str
    total: Decimal
    sha256: str
    closed_at: datetime | None
    partial: bool = Field(description="Only the caller's own teams' lines and their total.")


class LineOut(Schema):
    position: int
    team_id: int | None
    team: str
    kind: str
    subject: str
    detail: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal


class StatementDetailOut(StatementOut):
    lines: list[LineOut]


class StatementPage(Schema):
    items: list[StatementOut]
    count: int


class StatementQuery(Schema):
    department: str = Field("", max_length=32, description="A cost center.")
    month: str = Field("", max_length=7, description="YYYY-MM")
    status: str = Field("", max_length=10, description="draft, closed or superseded")
    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(50, ge=1, le=MAX_PAGE_SIZE)


class ReissueIn(Schema):
    reason: str = Field(max_length=2000, description="Why (10 to 2,000 characters); audited.")


@router.get("/statements", response=StatementPage)
def list_statements(request, filters: Query[StatementQuery]):
    """The current month's drafts of the departments the caller reads, then every stored revision,
    newest month first."""
    reader = _reader(request)
    now = timezone.now()
    if filters.status and filters.status not in overview.STATUSES:
        raise Invalid(
            f"status: use one of {', '.join(overview.STATUSES)}.", fields={"status": ["Unknown status."]}
        )
    count, rows = overview.statements(
        reader,
        now,
        offset=(filters.page - 1) * filters.page_size,
        limit=filters.page_size,
        cost_center=filters.department.strip().upper(),
        month=money.parse_month(filters.month, now) if filters.month else None,
        status=filters.status,
    )
    return {"items": rows, "count": count}


# Declared before the statement page: Django tries the patterns in order, and /statements/<id>/reissue
# would match /statements/<department>/<month> (which has no POST) first.
@router.post("/statements/{statement_id}/reissue", response={201: StatementOut})
def reissue_statement(request, statement_id: int, payload: ReissueIn):
    """A new revision of the statement in force, computed from the ledger now; platform admins, with an
    audited reason. The old revision is kept, superseded."""
    reader = _reader_or_hidden(request)
    ids = reader.department_ids()
    statement = Statement.objects.select_related("department").filter(pk=statement_id).first()
    if statement is None or (ids is not None and statement.department_id not in ids):
        raise NotFound("Statement not found.")
    fresh = statements.reissue(request.auth, statement, payload.reason)
    # Only admins get here, and they read every line: the new revision's own total is the caller's.
    return Status(201, overview.stored_row(fresh, partial=False))


@router.get("/statements/{department}/{month}", response=StatementDetailOut)
def get_statement(request, department: str, month: str, revision: int | None = Query(None, ge=1, le=10_000)):
    """A department's month: the draft (current or unclosed month) or the revision in force, or
    ``revision`` when given. Team owners get their teams' lines only, flagged ``partial``."""
    reader = _reader_or_hidden(request)
    cost_center = department.strip().upper()
    found = None
    if COST_CENTER.match(cost_center):
        found = access.departments(request.auth).filter(cost_center=cost_center).first()
    if found is None:
        raise NotFound("Department not found.")
    answer = overview.statement(
        reader, found, money.parse_month(month, timezone.now()), timezone.now(), revision
    )
    if answer is None:
        raise NotFound("No such revision of that statement.")
    header, lines = answer
    return {
        **header.__dict__,
        "lines": [_line(position, line) for position, line in enumerate(lines, start=1)],
    }


def _reader_or_hidden(request) -> access.Reader:
    # An object route: who reads no billing at all finds nothing here (404), like any hidden object.
    if not gate.can(request.auth, "billing.view"):
        raise NotFound("Not found.")
    return access.reader(request.auth)


def _line(position: int, line) -> dict:
    return {
        "position": getattr(line, "position", position),
        "team_id": line.team_id,
        "team": line.team,
        "kind": str(line.kind),
        "subject": line.subject,
        "detail": line.detail,
        "quantity": line.quantity,
        "unit": line.unit,
        "unit_price": line.unit_price,
        "amount": line.amount,
    }
