"""Budget alerts: each threshold of a budget alerts once a month for each amount it is measured against,
by e-mail (to the budget's addresses, else the team's owners or the department's managers) and by a signed
webhook.

The alert row is committed first (a unique constraint makes it exactly one even with two checks running
at once), then delivered, then its delivery outcome recorded and audited. A delivery that fails is
recorded and never retried: an alert sent twice is worse for its readers than one that says it failed.
A row says how far its delivery got: ``{"pending": …}`` when made, ``{"sending": …}`` once a check has
claimed it (a conditional update: one check only) and begun, then each channel's outcome. An alert whose check
stopped before beginning (a worker killed or restarted) is delivered once, late, by a later check; one whose
check stopped after beginning may have reached some of its recipients, so it is recorded as interrupted and
not sent again (``_left_behind``). Each e-mail recipient gets a message of their own: none sees the others'
addresses. In production, an e-mail backend that delivers nothing (the console, Django's default without
``EMAIL_HOST``) is no mail server: the e-mail part is recorded as failed with that reason, never as sent.
The same pass stores each budget's month-to-date spend, which the gateway's routing table reads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends import console, dummy, locmem
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

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
# No e-mail is begun after MAIL_WINDOW, and each read of the operator's relay waits at most EMAIL_TIMEOUT; the
# webhook is bounded as a whole (webhooks.post). A delivery slower still than UNDELIVERED_AFTER (a relay
# answering a byte at a time) may be recorded as interrupted by another check while it goes on: its own
# outcome is then recorded after, and audited too. It is never sent twice.
MAIL_WINDOW = timedelta(minutes=5)
# An alert still pending or sending this long after its row was made (its delivery begins at once) was left
# by a check that stopped: a later check delivers a pending one and records a sending one as interrupted.
# A pending one older than UNDELIVERED_UNTIL is no longer news; it stays pending.
UNDELIVERED_AFTER = timedelta(minutes=20)
UNDELIVERED_UNTIL = timedelta(days=7)
NO_RECIPIENT = "failed: no recipient (no notify e-mails, and no active owner or manager with an address)"
# Django's backends that reach nobody: the console writes to the log (and filebased, its subclass, to files),
# locmem keeps messages in memory, dummy drops them. Fine in development and tests, where they are read
# there; in production an alert "sent" through one misleads whoever trusts it went out.
UNDELIVERING_BACKENDS = (console.EmailBackend, locmem.EmailBackend, dummy.EmailBackend)
NO_MAIL_SERVER = (
    "failed: not delivered: no mail server configured (set EMAIL_HOST); EMAIL_BACKEND {} sends nothing"
)
INTERRUPTED = (
    "interrupted: the check delivering it stopped after it began (a worker killed or restarted), so some of "
    "its e-mails or its webhook may have gone; it is not sent again"
)


def crossed(spent: Decimal, amount: Decimal, threshold: int) -> bool:
    if amount <= 0:
        return spent > 0  # a zero budget: any spend passes every threshold
    return spent * 100 >= amount * threshold


def check(as_of: datetime | None = None) -> list[BudgetAlert]:
    """Store every budget's spend of the month so far, see to the alerts a stopped check left behind,
    then alert the thresholds newly crossed; in a month's first hours, also those its previous month crossed
    after its last check. The spends are stored before any alert is delivered: the gateway's hard limits
    read them, and a slow delivery must not hold them up."""
    as_of = as_of or timezone.now()
    budgets = list(Budget.objects.select_related("team", "department").order_by("pk"))
    if not budgets:
        return []
    departments = {b.department_id if b.department_id else b.team.department_id for b in budgets}  # type: ignore[union-attr]
    spend = month_to_date(as_of, department_ids=departments)
    for budget in budgets:
        Budget.objects.filter(pk=budget.pk).update(**spend.stored(budget))  # the current month's, always
    sent = _left_behind(as_of)
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
            defaults={
                "spend": total,
                "sent_at": spend.as_of,
                "delivery": {"pending": spend.as_of.isoformat()},
            },
        )
        if created and _deliver(budget, alert, spend.as_of):  # only the check that made the row delivers it
            sent.append(alert)
    return sent


def _left_behind(as_of: datetime) -> list[BudgetAlert]:
    """The alerts of checks that stopped: those never begun are delivered late (claimed first, so that two
    checks at once deliver each once), those begun are recorded as interrupted, never sent twice. Rows made
    before delivery was recorded in steps (``{}`` until delivered) count as begun."""
    old = BudgetAlert.objects.filter(sent_at__lt=as_of - UNDELIVERED_AFTER).select_related(
        "budget__team", "budget__department"
    )
    sent: list[BudgetAlert] = []
    pending = old.filter(delivery__has_key="pending", sent_at__gte=as_of - UNDELIVERED_UNTIL)
    for alert in pending.order_by("pk"):
        logger.warning("billing: budget alert %s was left undelivered; delivering it late", alert.pk)
        if _deliver(alert.budget, alert, as_of, late=True):
            sent.append(alert)
    begun = old.filter(Q(delivery__has_key="sending") | Q(delivery={})).order_by("pk")
    for alert in begun:
        if alert.delivery and datetime.fromisoformat(alert.delivery["sending"]) >= as_of - UNDELIVERED_AFTER:
            continue  # claimed lately: a late delivery under way
        delivery = {"email": INTERRUPTED}
        with transaction.atomic():
            if (
                BudgetAlert.objects.filter(pk=alert.pk, delivery=alert.delivery).update(delivery=delivery)
                != 1
            ):
                continue  # recorded meanwhile: by its own check, or another one
            logger.warning("billing: budget alert %s was interrupted while being delivered", alert.pk)
            after = {**_payload(alert.budget, alert), "delivery": delivery, "recorded_at": as_of.isoformat()}
            audit.record(
                Actor.for_system("billing.check_budgets"), AuditAction.BUDGET_ALERT, alert.budget, after=after
            )
    return sent


def _deliver(budget: Budget, alert: BudgetAlert, as_of: datetime, *, late: bool = False) -> bool:
    """Deliver a pending alert, once it is claimed: whether this check did (another may have claimed it)."""
    claim = {"sending": as_of.isoformat()}
    if BudgetAlert.objects.filter(pk=alert.pk, delivery=alert.delivery).update(delivery=claim) != 1:
        return False
    payload = _payload(budget, alert)
    recipients = _recipients(budget)
    # A month that had ended when the row was made (a previous month's alert, early in the next) was spent;
    # a row made within its month says what was spent by then, however late it is delivered.
    ended = alert.month < money.month_start(alert.sent_at)
    delivery = {"email": _email(budget, alert, payload, recipients, ended) if recipients else NO_RECIPIENT}
    if held := sum(1 for address in budget.notify_emails or [] if webhooks.email_refusal(address)):
        delivery["email_held"] = f"{held} address(es) typed in, outside PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS"
    if budget.webhook_url:
        delivery["webhook"] = webhooks.post(budget.webhook_url, payload)
    after = {**payload, "delivery": delivery}
    if late:  # its check stopped before delivering it; payload's sent_at is when the row was made
        after["delivered_late_at"] = as_of.isoformat()
    with transaction.atomic():
        BudgetAlert.objects.filter(pk=alert.pk).update(delivery=delivery)
        alert.delivery = delivery
        audit.record(Actor.for_system("billing.check_budgets"), AuditAction.BUDGET_ALERT, budget, after=after)
    return True


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
    """The budget's addresses the operator still allows (webhooks.email_refusal: one typed in before
    PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS left it out gets nothing); without any, its team's owners or its
    department's managers (those active and with an address), as the budgets page promises."""
    if allowed := [address for address in budget.notify_emails or [] if not webhooks.email_refusal(address)]:
        return allowed
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


def _email(budget: Budget, alert: BudgetAlert, payload: dict, recipients: list[str], ended: bool) -> str:
    """The e-mails sent, in words. A month that has ended (one alerted early in the next) was spent, not
    spent so far."""
    whose = f"team {payload['team']}" if payload["team"] else f"department {payload['department']}"
    if unsent := _no_mail_server():
        # Final like any failure (not left pending to retry): each alert warns once, its webhook still goes.
        logger.warning("billing: budget alert %s for %s: e-mail %s", alert.pk, whose, unsent)
        return unsent
    subject = f"[Portfolio] {whose} has spent {alert.threshold}% of its {payload['month']} budget"
    spent = f"was spent in {payload['month']}" if ended else f"is spent in {payload['month']} so far"
    body = (
        f"The monthly budget of {whose} is {alert.amount} {payload['currency']}; "
        f"{alert.spend} {payload['currency']} {spent} ({alert.threshold}% threshold).\n"
        + ("It is a hard limit: calls, jobs and scale-ups stop at 100%.\n" if budget.hard_limit else "")
    )
    errors = _send_each(subject, body, recipients)
    if not errors:
        return "sent"
    logger.warning("billing: budget alert e-mail for %s: %d not sent: %s", whose, len(errors), errors[0])
    return f"failed: {len(errors)} of {len(recipients)} not sent: {errors[0]}"[:300]


def _no_mail_server() -> str | None:
    """Why no e-mail can reach anyone, in production with a backend that delivers nothing; else None."""
    if not settings.PRODUCTION:
        return None  # make run, tests: the console's messages are read in the log, locmem's by the tests
    try:
        backend = import_string(settings.EMAIL_BACKEND)
    except ImportError:
        return None  # get_connection names the mistake when the e-mails are sent
    if not (isinstance(backend, type) and issubclass(backend, UNDELIVERING_BACKENDS)):
        return None
    return NO_MAIL_SERVER.format(settings.EMAIL_BACKEND)


def _send_each(subject: str, body: str, recipients: list[str]) -> list[str]:
    """A message to each recipient on its own, over one connection (one message to all showed each of them
    the others' addresses); what went wrong with each not sent, in words. None is begun after MAIL_WINDOW."""
    deadline = time.monotonic() + MAIL_WINDOW.total_seconds()
    connection = get_connection(fail_silently=False)
    try:
        connection.open()
    except Exception as exc:  # noqa: BLE001 - SMTP fails in many ways; each is recorded, none crashes the task
        return [f"{type(exc).__name__}: {exc}"] * len(recipients)
    errors: list[str] = []
    try:
        for address in recipients:
            if time.monotonic() > deadline:
                errors.append(f"not begun within {MAIL_WINDOW.total_seconds():g} s of the first")
                continue
            try:
                EmailMessage(subject, body, to=[address], connection=connection).send()
            except Exception as exc:  # noqa: BLE001 - as above; the next recipient is still tried
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):  # each message went or failed already
            connection.close()
    return errors
