"""Budget alerts: each threshold of a budget alerts once a month, by e-mail and by a signed webhook.

The alert row is committed first (a unique constraint makes it exactly one even with two checks running
at once), then delivered, then its delivery outcome recorded and audited. A delivery that fails is
recorded and never retried: an alert sent twice is worse for its readers than one that says it failed.
The same pass stores each budget's month-to-date spend, which the gateway's routing table reads.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.billing.models import Budget, BudgetAlert
from portfolio.billing.spend import month_to_date

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Portfolio-Signature"


def signature(body: bytes, secret: bytes | None = None) -> str:
    """The value of the signature header: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    key = settings.WEBHOOK_SECRET if secret is None else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def crossed(spent: Decimal, amount: Decimal, threshold: int) -> bool:
    if amount <= 0:
        return spent > 0  # a zero budget: any spend passes every threshold
    return spent * 100 >= amount * threshold


def check(as_of: datetime | None = None) -> list[BudgetAlert]:
    """Store every budget's spend of the month so far and alert the thresholds newly crossed."""
    as_of = as_of or timezone.now()
    budgets = list(Budget.objects.select_related("team", "department").order_by("pk"))
    if not budgets:
        return []
    departments = {b.department_id if b.department_id else b.team.department_id for b in budgets}  # type: ignore[union-attr]
    spend = month_to_date(as_of, department_ids=departments)
    sent: list[BudgetAlert] = []
    for budget in budgets:
        total, _ = spend.of_budget(budget)
        Budget.objects.filter(pk=budget.pk).update(**spend.stored(budget))
        for threshold in sorted(set(budget.thresholds)):
            if not crossed(total, budget.amount, threshold):
                continue
            alert, created = BudgetAlert.objects.get_or_create(
                budget=budget, month=spend.month, threshold=threshold, defaults={"spend": total}
            )
            if created:  # only the check that made the row delivers it
                _deliver(budget, alert)
                sent.append(alert)
    return sent


def _deliver(budget: Budget, alert: BudgetAlert) -> None:
    payload = _payload(budget, alert)
    delivery: dict[str, str] = {}
    if budget.notify_emails:
        delivery["email"] = _email(budget, alert, payload)
    if budget.webhook_url:
        delivery["webhook"] = _webhook(budget.webhook_url, payload)
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
        "amount": str(budget.amount),
        "currency": settings.BILLING_CURRENCY,
        "hard_limit": budget.hard_limit,
        "sent_at": alert.sent_at.isoformat(),
    }


def _email(budget: Budget, alert: BudgetAlert, payload: dict) -> str:
    whose = f"team {payload['team']}" if payload["team"] else f"department {payload['department']}"
    subject = f"[Portfolio] {whose} has spent {alert.threshold}% of its {payload['month']} budget"
    body = (
        f"The monthly budget of {whose} is {budget.amount} {payload['currency']}; "
        f"{alert.spend} {payload['currency']} is spent in {payload['month']} so far "
        f"({alert.threshold}% threshold).\n"
        + ("It is a hard limit: calls, jobs and scale-ups stop at 100%.\n" if budget.hard_limit else "")
    )
    try:
        send_mail(subject, body, None, list(budget.notify_emails), fail_silently=False)
    except Exception as exc:  # noqa: BLE001 - SMTP fails in many ways; each is recorded, none crashes the task
        logger.warning("billing: budget alert e-mail for %s failed: %s", whose, exc)
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return "sent"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could point the signed POST anywhere (an internal host the URL check refused).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _internal_host(url: str) -> bool:
    """Whether the URL's host is, or resolves to, an address that is not global: a name set when it
    pointed outside may point inside by now (checked again here, not only when the budget was set)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False  # the connection fails the same way, and is recorded
    return any(not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_global for info in infos)


def _webhook(url: str, payload: dict) -> str:
    if not settings.BILLING_WEBHOOK_PRIVATE_HOSTS and _internal_host(url):
        return "failed: the host is an internal address; not called"
    body = json.dumps(payload, sort_keys=True).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL was checked to be http(s) when set
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Portfolio-Budget-Alerts",
            SIGNATURE_HEADER: signature(body),
        },
    )
    try:
        with _OPENER.open(request, timeout=settings.BILLING_WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except Exception as exc:  # noqa: BLE001 - refused, timed out, bad TLS: recorded, never raised
        logger.warning("billing: budget webhook %s failed: %s", url, exc)
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return f"sent: HTTP {status}" if 200 <= status < 300 else f"failed: HTTP {status}"
