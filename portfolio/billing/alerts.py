"""Budget alerts: each threshold of a budget alerts once a month for each amount it is measured against,
by e-mail (to the budget's addresses, else the team's owners or the department's managers) and by a signed
webhook.

The alert row is committed first (a unique constraint makes it exactly one even with two checks running
at once), then delivered, then its delivery outcome recorded and audited. A delivery that fails is
recorded and never retried: an alert sent twice is worse for its readers than one that says it failed.
The same pass stores each budget's month-to-date spend, which the gateway's routing table reads.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import DepartmentRoleName, TeamRole
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.billing import money, webhooks
from portfolio.billing.models import Budget, BudgetAlert
from portfolio.billing.spend import Spend, month_to_date

logger = logging.getLogger(__name__)

# Spend that lands after a month's last check (the beat runs every 5 minutes; the token rollup hands over
# whole hours) is first seen in the next month: for these first hours of a month, its previous month is
# checked as well, with a wide margin for a worker that was down a while.
PREVIOUS_MONTH_GRACE = timedelta(hours=6)
NO_RECIPIENT = "failed: no recipient (no notify e-mails, and no active owner or manager with an address)"


def crossed(spent: Decimal, amount: Decimal, threshold: int) -> bool:
    if amount <= 0:
        return spent > 0  # a zero budget: any spend passes every threshold
    return spent * 100 >= amount * threshold


def check(as_of: datetime | None = None) -> list[BudgetAlert]:
    """Store every budget's spend of the month so far, then alert the thresholds newly crossed; in a month's
    first hours, also those its previous month crossed after its last check. The spends are stored before any
    alert is delivered: the gateway's hard limits read them, and a slow delivery must not hold them up."""
    as_of = as_of or timezone.now()
    budgets = list(Budget.objects.select_related("team", "department").order_by("pk"))
    if not budgets:
        return []
    departments = {b.department_id if b.department_id else b.team.department_id for b in budgets}  # type: ignore[union-attr]
    spend = month_to_date(as_of, department_ids=departments)
    for budget in budgets:
        Budget.objects.filter(pk=budget.pk).update(**spend.stored(budget))  # the current month's, always
    sent: list[BudgetAlert] = []
    start, _ = money.month_bounds(money.month_start(as_of))
    if as_of - start < PREVIOUS_MONTH_GRACE:
        previous = month_to_date(
            as_of, department_ids=departments, month=money.month_start(start - timedelta(days=1))
        )
        for budget in budgets:
            # Only a budget as it was when that month ended (no earlier amounts or thresholds are kept): one
            # made or changed since would judge last month by this month's terms.
            if budget.updated_at < start:
                sent += _alert(budget, previous)
    for budget in budgets:
        sent += _alert(budget, spend)
    return sent


def _alert(budget: Budget, spend: Spend) -> list[BudgetAlert]:
    """The budget's thresholds newly crossed in the spend's month, each alerted once for the amount it is
    measured against: a threshold already alerted at this amount or a higher one is not sent again (so a
    lowered amount sends nothing new, however often it is changed), one of a raised amount is."""
    total, _ = spend.of_budget(budget)
    sent: list[BudgetAlert] = []
    alerted = BudgetAlert.objects.filter(budget=budget, month=spend.month, amount__gte=budget.amount)
    done = set(alerted.values_list("threshold", flat=True))
    for threshold in sorted(set(budget.thresholds) - done):
        if not crossed(total, budget.amount, threshold):
            continue
        alert, created = BudgetAlert.objects.get_or_create(
            budget=budget,
            month=spend.month,
            threshold=threshold,
            amount=budget.amount,
            defaults={"spend": total},
        )
        if created:  # only the check that made the row delivers it
            _deliver(budget, alert)
            sent.append(alert)
    return sent


def _deliver(budget: Budget, alert: BudgetAlert) -> None:
    payload = _payload(budget, alert)
    recipients = _recipients(budget)
    delivery = {"email": _email(budget, alert, payload, recipients) if recipients else NO_RECIPIENT}
    if budget.webhook_url:
        delivery["webhook"] = webhooks.post(budget.webhook_url, payload)
    with transaction.atomic():
        BudgetAlert.objects.filter(pk=alert.pk).update(delivery=delivery)
        alert.delivery = delivery
        audit.record(
            Actor.for_system("billing.check_budgets"),
            AuditAction.BUDGET_ALERT,
            budget,
            after={**payload, "delivery": delivery},
        )


def _payload(budget: Budget, alert: BudgetAlert) -> dict:
    return {
        "event": "budget.alert",
        "scope": budget.scope,
        "team": budget.team.slug if budget.team else None,
        "department": budget.department.cost_center if budget.department else None,
        "month": f"{alert.month:%Y-%m}",
        "threshold": alert.threshold,
        "spend": str(alert.spend),
        "amount": str(alert.amount),
        "currency": settings.BILLING_CURRENCY,
        "hard_limit": budget.hard_limit,
        "sent_at": alert.sent_at.isoformat(),
    }


def _recipients(budget: Budget) -> list[str]:
    """The budget's addresses; without any, its team's owners or its department's managers (those active
    and with an address), as the budgets page promises."""
    if budget.notify_emails:
        return list(budget.notify_emails)
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    if budget.team_id is not None:
        users = users.filter(memberships__team_id=budget.team_id, memberships__role=TeamRole.OWNER)
    else:
        assert budget.department_id is not None
        users = users.filter(
            department_roles__department_id=budget.department_id,
            department_roles__role=DepartmentRoleName.MANAGER,
        )
    return sorted(set(users.values_list("email", flat=True)))


def _email(budget: Budget, alert: BudgetAlert, payload: dict, recipients: list[str]) -> str:
    whose = f"team {payload['team']}" if payload["team"] else f"department {payload['department']}"
    subject = f"[Portfolio] {whose} has spent {alert.threshold}% of its {payload['month']} budget"
    body = (
        f"The monthly budget of {whose} is {alert.amount} {payload['currency']}; "
        f"{alert.spend} {payload['currency']} is spent in {payload['month']} so far "
        f"({alert.threshold}% threshold).\n"
        + ("It is a hard limit: calls, jobs and scale-ups stop at 100%.\n" if budget.hard_limit else "")
    )
    try:
        send_mail(subject, body, None, recipients, fail_silently=False)
    except Exception as exc:  # noqa: BLE001 - SMTP fails in many ways; each is recorded, none crashes the task
        logger.warning("billing: budget alert e-mail for %s failed: %s", whose, exc)
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return "sent"
