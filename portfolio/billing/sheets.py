"""What an export shows of a statement or a draft (``Sheet``): its header, the lines the reader may see, and
the statement's sha256. A draft's sha256 is ``statements.digest`` over the header a closed statement's covers,
with revision 0, and the lines as the ledger has them at the export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from portfolio.accounts.models import Department
from portfolio.billing import statements
from portfolio.billing.models import Statement
from portfolio.billing.statements import Draft


@dataclass
class Sheet:
    """What an export shows of a statement or draft: its header and the lines the reader may see."""

    department: Department
    month: date
    revision: int  # 0: a draft
    status: str  # closed, superseded or draft
    currency: str
    sha256: str
    lines: list
    partial: bool
    as_of: datetime
    statement: Statement | None = None
    # A closed statement's own (the one its sha256 covers), a draft's the department's now.
    cost_center: str = ""

    @property
    def draft(self) -> bool:
        return self.statement is None

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), statements.ZERO)

    @property
    def label(self) -> str:
        return statements.label(self.month)

    def by_team(self) -> list[tuple[str, list, Decimal]]:
        """(team, its lines, their subtotal), teams in the order they first appear on the statement, under the
        name of their first line: a re-issue keeps earlier lines under the name they were written with, and a
        team renamed since is still one team."""
        groups: dict[object, list] = {}
        for line in self.lines:
            groups.setdefault(line.team if line.team_id is None else line.team_id, []).append(line)
        return [
            (lines[0].team, lines, sum((line.amount for line in lines), statements.ZERO))
            for lines in groups.values()
        ]

    def filename(self, extension: str) -> str:
        revision = "draft" if self.draft else f"r{self.revision}"
        partial = "-partial" if self.partial else ""
        return f"statement-{self.cost_center}-{self.label}-{revision}{partial}.{extension}"


def sheet(source: Draft | Statement, teams: frozenset[int] | None = None) -> Sheet:
    """The sheet of a closed statement (or a Draft holding one) or of a live draft; ``teams`` keeps only
    those teams' lines (None: all)."""
    if isinstance(source, Draft) and source.statement is not None:
        source = source.statement
    if isinstance(source, Statement):
        lines = list(source.lines.all())
        result = Sheet(
            department=source.department, month=source.month, revision=source.revision, status=source.status,
            currency=source.currency, sha256=source.sha256, lines=lines, partial=False, as_of=source.closed_at,
            statement=source, cost_center=source.cost_center,
        )  # fmt: skip
    else:
        lines = list(source.lines)
        # The header a closed statement's digest covers, with revision 0: a draft has none yet.
        header = {
            "department": source.department.cost_center,
            "month": statements.label(source.month),
            "revision": 0,
            "currency": settings.BILLING_CURRENCY,
            "total": str(sum((line.amount for line in lines), statements.ZERO)),
        }
        result = Sheet(
            department=source.department, month=source.month, revision=0, status="draft",
            currency=settings.BILLING_CURRENCY, sha256=statements.digest(header, lines), lines=lines,
            partial=False, as_of=timezone.now(), cost_center=source.department.cost_center,
        )  # fmt: skip
    if teams is not None:
        result.lines = [line for line in lines if line.team_id in teams]
        result.partial = True
    return result
