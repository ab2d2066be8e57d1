from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.models import Department
from portfolio.billing.choices import LineKind, StatementStatus


def money_field() -> models.DecimalField:
    return models.DecimalField(max_digits=16, decimal_places=2)


class StatementQuerySet(models.QuerySet):
    def current(self) -> StatementQuerySet:
        """The revision in force of each department-month (re-issues supersede the earlier ones)."""
        return self.filter(status=StatementStatus.CLOSED)


class Statement(models.Model):
    """One revision of a department's closed bill for a calendar month; immutable once written.

    The open month is a draft computed from the ledger on demand and never stored. PostgreSQL refuses any
    change to a stored statement but marking it superseded, and any change to its lines (migration 0003),
    and any line beyond the ``line_count`` it was written with (migration 0009).
    """

    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="statements")
    # A renamed cost center leaves the statements already written as they were: their hash covers this one.
    cost_center = models.CharField(max_length=32, help_text="The department's cost center when written")
    month = models.DateField(help_text="The first day of the month billed")
    revision = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=StatementStatus.choices, default=StatementStatus.CLOSED)
    currency = models.CharField(max_length=3)
    total = money_field()
    sha256 = models.CharField(
        max_length=64, help_text="Over the canonical JSON of the statement and its lines"
    )
    closed_at = models.DateTimeField(default=timezone.now)
    closed_by = models.CharField(max_length=150, help_text="The actor that closed or re-issued it")
    reason = models.TextField(blank=True, help_text="Why a revision after the first was issued")
    line_count = models.PositiveIntegerField(
        default=0, help_text="The lines it was written with: PostgreSQL refuses any other line"
    )

    objects = StatementQuerySet.as_manager()

    class Meta:
        ordering = ["-month", "department__name", "-revision"]
        constraints = [
            models.UniqueConstraint(
                fields=["department", "month", "revision"], name="one_statement_revision_per_month"
            ),
            # Only one revision of a month is in force.
            models.UniqueConstraint(
                fields=["department", "month"],
                condition=Q(status=StatementStatus.CLOSED),
                name="one_closed_statement_per_month",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cost_center} {self.month:%Y-%m} r{self.revision}"

    def snapshot(self) -> dict:
        return {
            "department": self.cost_center,
            "month": self.month.strftime("%Y-%m"),
            "revision": self.revision,
            "status": self.status,
            "currency": self.currency,
            "total": str(self.total),
            "sha256": self.sha256,
            "reason": self.reason,
        }


class StatementLine(models.Model):
    """One charge of a statement: a quantity at a unit price, its amount rounded once to the cent."""

    statement = models.ForeignKey(Statement, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveIntegerField()
    team_id = models.BigIntegerField(null=True)
    team = models.CharField(max_length=100)
    kind = models.CharField(max_length=12, choices=LineKind.choices)
    subject = models.CharField(max_length=150, help_text="Endpoint, deployment, job, store or month adjusted")
    detail = models.CharField(max_length=200, blank=True)
    quantity = models.DecimalField(max_digits=28, decimal_places=9)
    unit = models.CharField(max_length=24)
    unit_price = models.DecimalField(max_digits=16, decimal_places=6)
    amount = money_field()

    class Meta:
        ordering = ["statement", "position"]
        constraints = [
            models.UniqueConstraint(fields=["statement", "position"], name="one_line_per_position")
        ]

    def __str__(self) -> str:
        return f"{self.team} {self.kind} {self.subject}: {self.amount}"
