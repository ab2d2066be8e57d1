"""Budget alerts: each threshold of a budget alerts once a month for each amount it is measured against,
by e-mail (to the budget's addresses, else the team's owners or the department's managers) and by a signed
webhook.

The alert row is committed first (a unique constraint makes it exactly one even with two checks running
at once), then delivered, then its delivery outcome recorded and audited. A delivery that fails is
recorded and never retried: an alert sent twice is worse for its readers than one that says it failed.
The same pass stores each budget's month-to-date spend, which the gateway's routing table reads.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
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
from portfolio.billing import money
from portfolio.billing.models import Budget, BudgetAlert
from portfolio.billing.spend import Spend, month_to_date

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Portfolio-Signature"
# Spend that lands after a month's last check (the beat runs every 5 minutes; the token rollup hands over
# whole hours) is first seen in the next month: for these first hours of a month, its previous month is
# checked as well, with a wide margin for a worker that was down a while.
PREVIOUS_MONTH_GRACE = timedelta(hours=6)
NO_RECIPIENT = "failed: no recipient (no notify e-mails, and no active owner or manager with an address)"


def signature(body: bytes, secret: bytes | None = None) -> str:
    """The value of the signature header: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    key = settings.WEBHOOK_SECRET if secret is None else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def crossed(spent: Decimal, amount: Decimal, threshold: int) -> bool:
    if amount <= 0:
        return spent > 0  # a zero budget: any spend passes every threshold
    return spent * 100 >= amount * threshold


def check(as_of: datetime | None = None) -> list[BudgetAlert]:
    """Store every budget's spend of the month so far and alert the thresholds newly crossed; in a month's
    first hours, also those its previous month crossed after its last check."""
    as_of = as_of or timezone.now()
    budgets = list(Budget.objects.select_related("team", "department").order_by("pk"))
    if not budgets:
        return []
    departments = {b.department_id if b.department_id else b.team.department_id for b in budgets}  # type: ignore[union-attr]
    sent: list[BudgetAlert] = []
    month = money.month_start(as_of)
    start, _ = money.month_bounds(month)
    if as_of - start < PREVIOUS_MONTH_GRACE:
        previous = month_to_date(
            as_of, department_ids=departments, month=money.month_start(start - timedelta(days=1))
        )
        for budget in budgets:
            if budget.created_at < start:  # one made since was not that month's budget
                sent += _alert(budget, previous)
    spend = month_to_date(as_of, department_ids=departments)
    for budget in budgets:
        Budget.objects.filter(pk=budget.pk).update(**spend.stored(budget))  # the current month's, always
        sent += _alert(budget, spend)
    return sent


def _alert(budget: Budget, spend: Spend) -> list[BudgetAlert]:
    """The budget's thresholds newly crossed in the spend's month, each alerted once for the amount it is
    measured against: a raised amount has its own thresholds; one lowered and raised back is not re-sent."""
    total, _ = spend.of_budget(budget)
    sent: list[BudgetAlert] = []
    for threshold in sorted(set(budget.thresholds)):
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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could point the signed POST anywhere (an internal host the URL check refused).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class InternalAddress(OSError):
    """The webhook's host resolves to an address that is not global: refused before connecting."""


def _is_global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 address may carry its zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def _connect(address: tuple[str, int], timeout: object = None, source_address=None) -> socket.socket:
    """socket.create_connection, resolving the host once: the addresses checked are the addresses
    connected to. A name checked and then resolved again to connect could answer a public address to
    the check and 127.0.0.1 to the connection (DNS rebinding); a name set when it pointed outside may
    point inside by now."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not settings.BILLING_WEBHOOK_PRIVATE_HOSTS and not all(_is_global(str(i[4][0])) for i in infos):
        raise InternalAddress(f"{host} resolves to an internal address")
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is None or isinstance(timeout, int | float):  # else the default timeout stays
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _connect  # what connect() calls with (host, port)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    # The TLS layer still verifies the certificate against the URL's host name (SNI and check_hostname
    # use self.host), only the TCP connection goes to the checked address.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _connect


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext):
        super().__init__(context=context)
        self.context = context

    def https_open(self, req):
        return self.do_open(_CheckedHTTPSConnection, req, context=self.context)


def opener(context: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """What webhooks are POSTed with: http(s) only, no redirect, each address connected to checked first;
    certificates verified by ``context``. No proxy from the environment: through one, the address
    connected to would be the proxy's, and the check would check the wrong host."""
    return urllib.request.build_opener(
        _NoRedirects,
        urllib.request.ProxyHandler({}),
        _CheckedHTTPHandler,
        _CheckedHTTPSHandler(context=context),
    )


_OPENER = opener(ssl.create_default_context())


def _webhook(url: str, payload: dict) -> str:
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
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, InternalAddress):
            return "failed: the host is an internal address; not called"
        logger.warning("billing: budget webhook %s failed: %s", url, exc)
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return f"sent: HTTP {status}" if 200 <= status < 300 else f"failed: HTTP {status}"
