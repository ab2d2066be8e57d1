from __future__ import annotations

import hashlib
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.models import Department, Team
from portfolio.billing.choices import BudgetScope

# The longest webhook URL a budget keeps: set_budget, the API and the form check this (budgets.MAX_URL), so
# that a longer one is refused as such, not failed at save.
WEBHOOK_URL_MAX = 500


def audited_webhook(url: str) -> str:
    """A webhook URL as audit rows keep it: scheme and host, and a fingerprint that changes with the URL.
    The path often is the credential (Slack-style hooks), and audit rows reach every auditor and export."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # set_budget refuses a user name or password; an old row may not
    return f"{parts.scheme}://{host} (sha256:{hashlib.sha256(url.encode()).hexdigest()[:16]})"


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(models.Model):
    """A monthly money budget of a team or a department: alerts at thresholds, optionally a hard limit.

    Admins (and, for their department's teams, department managers) set ``amount`` and ``ceiling``; a
    team's owners may lower ``amount`` below the ceiling, never raise it above.
    """

    scope = models.CharField(max_length=10, choices=BudgetScope.choices)
    team = models.OneToOneField(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="budget")
    department = models.OneToOneField(
        Department, null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    amount = models.DecimalField(max_digits=14, decimal_places=2, help_text="Money per calendar month")
    ceiling = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="The most a team's owners may set"
    )
    thresholds = ArrayField(
        models.PositiveSmallIntegerField(), default=default_thresholds, help_text="Percentages that alert"
    )
    hard_limit = models.BooleanField(default=False, help_text="Refuse spending past the amount")
    notify_emails = ArrayField(models.EmailField(), default=list, blank=True)
    webhook_url = models.URLField(max_length=WEBHOOK_URL_MAX, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    # The month's spend as the alert task last measured it (every few minutes): the gateway's routing table
    # reads these every second, which it could not afford to compute (statements are drafted line by line).
    spend_month = models.DateField(null=True, blank=True, help_text="The month the spend fields are of")
    token_spend = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    other_spend = models.DecimalField(
        max_digits=16,
        decimal_places=2,
        default=Decimal("0"),
        help_text="Compute, storage, credits, at-cost shares",
    )
    spend_as_of = models.DateTimeField(null=True, blank=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["scope", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(scope=BudgetScope.TEAM, team__isnull=False, department__isnull=True))
                | Q(scope=BudgetScope.DEPARTMENT, team__isnull=True, department__isnull=False),
                name="budget_has_exactly_its_scope",
            ),
            models.CheckConstraint(condition=Q(amount__gte=Decimal("0")), name="budget_not_negative"),
        ]

    def __str__(self) -> str:
        return f"budget of {self.team or self.department}"

    def snapshot(self) -> dict:
        return {
            "scope": self.scope,
            "team": self.team.slug if self.team else None,
            "department": self.department.cost_center if self.department else None,
            "amount": str(self.amount),
            "ceiling": str(self.ceiling) if self.ceiling is not None else None,
            "thresholds": list(self.thresholds),
            "hard_limit": self.hard_limit,
            "notify_emails": list(self.notify_emails),  # who is told, as the budget page shows them
            "webhook_url": audited_webhook(self.webhook_url),
        }


class BudgetAlert(models.Model):
    """A threshold of a budget's amount crossed in a month: sent once, by e-mail and webhook."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField()
    threshold = models.PositiveSmallIntegerField()
    # A threshold of an amount raised mid-month is a new alert; of one lowered and raised back, not.
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, help_text="The budget's amount the threshold is a percentage of"
    )
    spend = models.DecimalField(max_digits=16, decimal_places=2)
    sent_at = models.DateTimeField(default=timezone.now)
    delivery = models.JSONField(default=dict, blank=True, help_text="How each channel went")

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            # Serves the check's get_or_create, and makes two checks at once send one alert.
            models.UniqueConstraint(
                fields=["budget", "month", "threshold", "amount"], name="one_alert_per_threshold_amount_month"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.threshold}% in {self.month:%Y-%m}"
