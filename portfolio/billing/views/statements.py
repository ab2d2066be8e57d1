"""Statements: the list of closed statements (and this month's drafts), one department-month with its
lines grouped by team, its revisions, and the admins' re-issue."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import messages
from django.db.models import Q, Sum
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from portfolio import listing
from portfolio.accounts import gate
from portfolio.accounts.models import Department
from portfolio.billing import access, money
from portfolio.billing import statements as billing_statements
from portfolio.billing.choices import LineKind
from portfolio.billing.models import Statement
from portfolio.billing.statements import ZERO, drafts_of, label, month_of
from portfolio.billing.views import billing_reader
from portfolio.errors import Invalid, NotFound
from portfolio.formviews import submit

PER_PAGE = listing.PAGE_SIZE
EXPORT_FORMATS = (("csv", "CSV"), ("pdf", "PDF"), ("zip", "Signed bundle"))


class ReissueForm(forms.Form):
    reason = forms.CharField(
        min_length=10,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why the statement is re-issued; kept with the new revision and in the audit trail.",
    )


def plain(value: Decimal) -> str:
    """A quantity or unit price as written, without trailing zeros: 0.250000000 -> "0.25"."""
    text = f"{value.normalize():f}"
    return text if value else "0"


def _month(value: str) -> date:
    """The month in a statement's address, refused as ``money.parse_month`` refuses it for the API: outside
    2000-2999 (0001-01 or 9999-12 would overflow the month arithmetic behind the page), or not begun yet (its
    "draft" would show only the adjustments of closed months)."""
    try:  # never "" (which parse_month reads as this month): the address's converter needs YYYY-MM
        return money.parse_month(value, timezone.now())
    except Invalid:
        raise NotFound("Statement not found.") from None


def _department(actor, cost_center: str) -> Department:
    found = access.departments(actor).filter(cost_center=cost_center).first()
    if found is None:
        raise NotFound("Department not found.")
    return found


@require_GET
def statement_list(request):
    """Permission: ``billing.view`` somewhere (else 403). Lists the statements of the departments the
    actor reads; a team owner sees the total of their own teams' lines only."""
    actor, reader = billing_reader(request)
    now = timezone.now()
    month = money.month_start(now)
    departments = access.departments(actor)
    statements = Statement.objects.filter(department__in=departments).select_related("department")
    whole = reader.everything or bool(reader.departments)
    if not reader.everything:
        # What a team owner may read of a department they do not read whole: their teams' lines.
        statements = statements.annotate(
            own_total=Sum("lines__amount", filter=Q(lines__team_id__in=list(reader.teams)))
        )
    page = listing.paginate(
        request, statements.order_by("-month", "department__name", "-revision"), per_page=PER_PAGE
    )
    rows = []
    for statement in page.object_list:
        teams = reader.team_filter(statement.department_id)
        rows.append(
            {
                "statement": statement,
                "department": statement.department,
                "month": statement.month,
                "total": statement.total if teams is None else (statement.own_total or ZERO),
                "partial": teams is not None,
            }
        )
    drafts = []
    if page.number == 1:
        ordered = list(departments.order_by("name", "pk"))
        computed = drafts_of(ordered, month, now)
        for department in ordered:
            teams = reader.team_filter(department.pk)
            lines = [line for line in computed[department.pk].lines if teams is None or line.team_id in teams]
            drafts.append(
                {
                    "department": department,
                    "month": month,
                    "total": sum((line.amount for line in lines), ZERO),
                    "partial": teams is not None,
                }
            )
    return render(
        request,
        "billing/statement_list.html",
        {
            "page": page,
            "rows": rows,
            "drafts": drafts,
            "currency": settings.BILLING_CURRENCY,
            "query": listing.query_without(request, "page"),
            "partial": not whole or any(row["partial"] for row in rows),
        },
    )


def _exports(department_id: int, month: str) -> list[dict]:
    """Where the statement's download forms POST: CSV, PDF and the signed bundle that verifies offline."""
    return [
        {
            "format": fmt,
            "label": name,
            "url": reverse(
                "billing-statement-export",
                kwargs={"department_id": department_id, "month": month, "fmt": fmt},
            ),
        }
        for fmt, name in EXPORT_FORMATS
    ]


def _statement_page(request, actor, reader, department: Department, month: date, *, form=None, status=200):
    now = timezone.now()
    draft = month_of(department, month, now)
    revisions = list(Statement.objects.filter(department=department, month=month).order_by("-revision"))
    shown = draft.statement
    lines = draft.lines
    superseded = None  # the revision asked for, which the download forms then export too
    asked = request.GET.get("revision", "")
    if asked.isdecimal() and len(asked) < 6:  # not isdigit(): "²" is a digit that int() refuses
        # An earlier (superseded) revision, read as it was written.
        shown = next((r for r in revisions if r.revision == int(asked)), None)
        if shown is None:
            raise NotFound("Statement not found.")
        lines = list(shown.lines.all())
        superseded = shown.revision
    teams = reader.team_filter(department.pk)
    if teams is not None:
        lines = [line for line in lines if line.team_id in teams]
    groups: dict[int | None, dict] = {}
    for line in lines:
        group = groups.setdefault(line.team_id, {"team": line.team, "lines": [], "subtotal": ZERO})
        group["lines"].append(
            {
                "line": line,
                "kind": LineKind(line.kind).label,
                "quantity": plain(line.quantity),
                "unit_price": plain(line.unit_price),
            }
        )
        group["subtotal"] += line.amount
    can_reissue = shown is not None and shown.status == "closed" and gate.can(actor, "statement.reissue")
    return render(
        request,
        "billing/statement_detail.html",
        {
            "department": department,
            "month": month,
            "month_label": label(month),
            "statement": shown,
            "is_draft": shown is None,
            "is_current_month": month == money.month_start(now),
            "groups": list(groups.values()),
            "total": sum((line.amount for line in lines), ZERO),
            "partial": teams is not None,
            "revisions": revisions,
            "currency": shown.currency if shown else settings.BILLING_CURRENCY,
            "can_reissue": can_reissue,
            "form": form or (ReissueForm() if can_reissue else None),
            "exports": _exports(department.pk, label(month)) if shown is not None else [],
            "export_revision": superseded,
        },
        status=status,
    )


@require_GET
def statement_detail(request, cost_center: str, month: str):
    """Permission: ``billing.view`` somewhere (else 403) and some of the department readable (else 404);
    a team owner sees their teams' lines only. ``?revision=`` shows an earlier revision."""
    actor, reader = billing_reader(request)
    return _statement_page(request, actor, reader, _department(actor, cost_center), _month(month))


@require_POST
def statement_reissue(request, cost_center: str, month: str):
    """Permission: ``billing.view`` (else 403), the department readable (else 404), ``statement.reissue``
    (admins, else 403). A new revision from the ledger now, with the reason; the old one is kept."""
    actor, reader = billing_reader(request)
    department = _department(actor, cost_center)
    when = _month(month)
    gate.require(actor, "statement.reissue")
    back = reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": label(when)})
    current = Statement.objects.current().filter(department=department, month=when).first()
    if current is None:
        messages.error(
            request,
            f"{label(when)} of {department.cost_center} is not closed: only a closed statement is re-issued.",
        )
        return redirect(back)
    form = ReissueForm(request.POST)
    done = submit(
        request,
        form,
        lambda: billing_statements.reissue(actor, current, form.cleaned_data["reason"]),
        success=lambda fresh: f"Revision {fresh.revision} of {department.cost_center} {label(when)} issued.",
        then=lambda _fresh: redirect(back),
    )
    if done is not None:
        return done
    return _statement_page(request, actor, reader, department, when, form=form, status=400)
