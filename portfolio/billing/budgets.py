"""Monthly money budgets of teams and departments: setting them (audited), the hard limits the gateway's
routing table reads, and the check that refuses a job or a scale-up once a hard limit is reached.

Who sets what:
- department budgets: platform admins only;
- team budgets: admins and the department's managers, everything including ``ceiling`` and ``hard_limit``;
  the team's owners only ``amount`` (at or below the ceiling, and the department's amount; a hard limit
  without a ceiling caps it at its amount, so they lower it only) and the alert settings; they cannot touch
  ``ceiling`` or ``hard_limit``.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Department, Team
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction
from portfolio.billing import access, money, webhooks
from portfolio.billing.choices import BudgetScope
from portfolio.billing.models import Budget
from portfolio.billing.models.budgets import WEBHOOK_URL_MAX, audited_webhook
from portfolio.errors import Conflict, Forbidden, Invalid

MAX_AMOUNT = Decimal("10000000000")  # 10^10 a month: far above any real budget, far below the column's
MAX_THRESHOLDS = 10
MAX_EMAILS = 20
MAX_URL = WEBHOOK_URL_MAX  # the column's
MICROS = Decimal(1_000_000)
UNCHANGED = object()  # an argument not given: keep what the budget has (or the default for a new one)


def _amount(name: str, value, *, required: bool = True) -> Decimal | None:
    if value is None and not required:
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Invalid(f"{name}: {value!r} is not a number.") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT:
        raise Invalid(f"{name}: use an amount from 0 to {MAX_AMOUNT}.")
    cents = amount.quantize(Decimal("0.01"))
    if amount != cents:
        raise Invalid(f"{name}: use at most 2 decimal places.")
    return cents  # as stored: the audit row says 400.00 whether 400 or 400.00 was sent


def _thresholds(values) -> list[int]:
    if not isinstance(values, list | tuple) or not values or len(values) > 50:
        raise Invalid(f"thresholds: a list of 1 to {MAX_THRESHOLDS} percentages.")
    found = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 200:
            raise Invalid(f"thresholds: whole percentages from 1 to 200, not {value!r}.")
        found.add(value)
    if len(found) > MAX_THRESHOLDS:
        raise Invalid(f"thresholds: at most {MAX_THRESHOLDS} different percentages.")
    return sorted(found)


def _emails(values) -> list[str]:
    """Addresses typed in for a budget's alerts: only in the domains PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS
    lists, and none in production until it lists some. Without any, the alerts go to the team's owners or the
    department's managers at their own accounts' addresses (alerts._recipients), which no list bounds."""
    if not isinstance(values, list | tuple) or len(values) > MAX_EMAILS:
        raise Invalid(f"notify_emails: a list of at most {MAX_EMAILS} addresses.")
    emails: list[str] = []
    for value in values:
        if not isinstance(value, str) or len(value) > 254:
            raise Invalid("notify_emails: each an address of at most 254 characters.")
        try:
            validate_email(value)
        except ValidationError:
            raise Invalid(f"notify_emails: {value!r} is not an e-mail address.") from None
        _refuse_domain(value)
        if value not in emails:
            emails.append(value)
    return emails


def _refuse_domain(address: str) -> None:
    if refused := webhooks.email_refusal(address):
        raise Invalid(f"notify_emails: {refused}")


def _webhook(value) -> str:
    """An http(s) URL the platform may call: no other scheme, no credentials in it, a host the operator allows
    (webhooks.refusal: PORTFOLIO_BILLING_WEBHOOK_HOSTS), and (unless allowed, or the host is listed there) no
    loopback, link-local or private address literal, which would let a team owner make the platform call its
    own internals."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise Invalid(f"webhook_url: a URL of at most {MAX_URL} characters.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise Invalid("webhook_url: not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("webhook_url: use an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise Invalid("webhook_url: no user name or password in the URL (the body is signed).")
    if refused := webhooks.refusal(parts.hostname):
        raise Invalid(f"webhook_url: {refused}")
    if not _may_be_internal(parts.hostname) and _internal(parts.hostname):
        raise Invalid("webhook_url: this host is internal; the platform does not call it.")
    return value


def _may_be_internal(host: str) -> bool:
    # A host an admin listed is called wherever it is: the list names the company's own receivers.
    return settings.BILLING_WEBHOOK_PRIVATE_HOSTS or webhooks.listed(host, settings.BILLING_WEBHOOK_HOSTS)


def _internal(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not webhooks.is_global(address)


def _team_to_manage(actor: Actor, team: Team) -> Team:
    """The team, if the actor may budget it: 404 when they cannot see it, 403 when their role does not
    allow it (its department's managers see it and hold ``budget.manage`` over it)."""
    team = Team.objects.get(pk=team.pk)
    gate.require(actor, "budget.manage", team)
    return team


def sets_all(actor: Actor, team: Team) -> bool:
    """Admins and the department's managers set all of a team's budget; owners only lower it."""
    return actor.is_admin or team.department_id in actor.managed_department_ids


def readable(actor: Actor):
    """The budgets of the departments and teams ``actor`` reads the billing of (all for admins and
    auditors)."""
    reader = access.reader(actor)
    found = Budget.objects.select_related("team", "department")
    if not reader.everything:
        found = found.filter(
            Q(department_id__in=reader.departments)
            | Q(team_id__in=reader.teams)
            | Q(team__department_id__in=reader.departments)
        )
    return found.order_by("scope", "id")


def settable_teams(actor: Actor):
    """The teams whose budget ``actor`` may set (admins: all; managers: their departments'; owners:
    theirs)."""
    if actor.is_admin:
        return Team.objects.order_by("name")
    owned = [team_id for team_id, role in actor.team_roles.items() if role == TeamRole.OWNER]
    return Team.objects.filter(Q(department_id__in=actor.managed_department_ids) | Q(pk__in=owned)).order_by(
        "name"
    )


@transaction.atomic
def set_budget(
    *,
    actor: Actor,
    team: Team | None = None,
    department: Department | None = None,
    amount,
    ceiling=UNCHANGED,
    thresholds=UNCHANGED,
    hard_limit=UNCHANGED,
    notify_emails=UNCHANGED,
    webhook_url=UNCHANGED,
) -> Budget:
    """Create or change the monthly budget of ``team`` or ``department`` (exactly one)."""
    if (team is None) == (department is None):
        raise Invalid("A budget is of a team or of a department: give exactly one.")
    if department is not None:
        department = access.department(actor, department.pk)  # 404 for one the actor reads nothing of
        if not actor.is_admin:
            raise Forbidden("Only platform admins set a department's budget.")
        budget = Budget.objects.select_for_update().filter(department=department).first()
        fresh = Budget(scope=BudgetScope.DEPARTMENT, department=department)
    else:
        assert team is not None
        team = _team_to_manage(actor, team)
        budget = Budget.objects.select_for_update().filter(team=team).first()
        fresh = Budget(scope=BudgetScope.TEAM, team=team)
    before = budget.snapshot() if budget else None
    budget = budget or fresh
    new_amount = _amount("amount", amount)
    assert new_amount is not None
    if team is not None and not sets_all(actor, team):
        if ceiling is not UNCHANGED and _amount("ceiling", ceiling, required=False) != budget.ceiling:
            raise Forbidden(
                "A team's owners cannot change its ceiling; ask an admin or a department manager."
            )
        if hard_limit is not UNCHANGED and bool(hard_limit) != budget.hard_limit:
            raise Forbidden(
                "A team's owners cannot change its hard limit; ask an admin or a department manager."
            )
        if budget.ceiling is not None and new_amount > budget.ceiling:
            raise Forbidden(f"amount: at most the ceiling of {budget.ceiling} an admin or manager set.")
        if budget.hard_limit and budget.ceiling is None and new_amount > budget.amount:
            # A hard limit set without a ceiling caps the team at its amount: its owners may lower it, and
            # only whoever set the limit raises it (or sets a ceiling to raise it to).
            raise Forbidden(
                f"amount: this budget's hard limit has no ceiling, so its owners may lower it from "
                f"{budget.amount} but not raise it; ask an admin or a department manager."
            )
        above = Budget.objects.filter(department_id=team.department_id).first()
        if above is not None and new_amount > above.amount:
            # Not naming the figure: a team's owners do not see their department's budget (found by review).
            raise Forbidden("amount: more than the department's budget allows; ask a department manager.")
    else:
        if ceiling is not UNCHANGED:
            if department is not None and ceiling is not None:
                raise Invalid("ceiling: only a team's budget has one (the most its owners may set).")
            budget.ceiling = _amount("ceiling", ceiling, required=False)
        if hard_limit is not UNCHANGED:
            if not isinstance(hard_limit, bool):
                raise Invalid("hard_limit: true or false.")
            budget.hard_limit = hard_limit
    budget.amount = new_amount
    if thresholds is not UNCHANGED:
        budget.thresholds = _thresholds(thresholds)
    if notify_emails is not UNCHANGED:
        budget.notify_emails = _emails(notify_emails)
    # The URL as listings show it (scheme, host, fingerprint), sent back by a client that read, changed
    # another field and wrote the budget back, is the one set: kept, not refused as not a URL.
    if webhook_url is not UNCHANGED and not (
        budget.webhook_url and webhook_url == audited_webhook(budget.webhook_url)
    ):
        budget.webhook_url = _webhook(webhook_url)
    budget.updated_at, budget.updated_by = timezone.now(), actor.user
    if budget.hard_limit and not (before and before["hard_limit"]):
        # A hard limit made or turned on mid-month: the gateway's counters start from the month's spend
        # from its first call, not only once billing.check_budgets next measures it (alerts.py).
        _measure(budget, team.department_id if team is not None else budget.department_id)
    try:
        with transaction.atomic():
            budget.save()
    except IntegrityError:
        raise Conflict("The budget was set at the same moment by someone else; try again.") from None
    audit.record(actor, AuditAction.BUDGET_SET, budget, before=before, after=budget.snapshot())
    return budget


def _measure(budget: Budget, department_id: int | None) -> None:
    """Store the month's spend on the budget as billing.check_budgets does (alerts.check)."""
    from portfolio.billing.spend import month_to_date

    spend = month_to_date(budget.updated_at, department_ids=[department_id])
    for name, value in spend.stored(budget).items():
        setattr(budget, name, value)


@transaction.atomic
def delete_budget(*, actor: Actor, budget: Budget) -> None:
    """Remove a budget (its alerts go with it). Whoever may set all of it may remove it."""
    # Locked as it is read (as set_budget locks it): its "before" is the budget deleted, not one that a change
    # committed meanwhile replaced.
    budget = (
        Budget.objects.select_for_update(of=("self",)).select_related("team", "department").get(pk=budget.pk)
    )
    if budget.team is not None:
        _team_to_manage(actor, budget.team)
        if not sets_all(actor, budget.team):
            raise Forbidden("Only admins and the department's managers remove a team's budget.")
    else:
        access.department(actor, budget.department_id)
        if not actor.is_admin:
            raise Forbidden("Only platform admins remove a department's budget.")
    before = budget.snapshot()
    audit.record(actor, AuditAction.BUDGET_DELETE, budget, before=before)
    budget.delete()


def hard_limits(now=None) -> dict[tuple[str, int], tuple[int, int]]:
    """For the gateway's routing table, one cheap query: ("team"|"department", id) -> (the money its token
    calls may reach this month, the token spend already on the ledger), both in micro-units.

    The limit is the amount less what the month's compute, storage and at-cost shares have already spent
    (as the alert task last measured it, or set_budget when it turned the limit on); the token spend (priced
    calls only: spend.TOKEN_KINDS) is the least the gateway's counter holds (a counter Redis lost, or one
    made before the spend was measured)."""
    month = money.month_start(now or timezone.now())
    caps: dict[tuple[str, int], tuple[int, int]] = {}
    for row in Budget.objects.filter(hard_limit=True).values(
        "scope", "team_id", "department_id", "amount", "spend_month", "token_spend", "other_spend"
    ):
        current = row["spend_month"] == month
        other = row["other_spend"] if current else Decimal(0)
        tokens = row["token_spend"] if current else Decimal(0)
        subject = row["team_id"] if row["scope"] == BudgetScope.TEAM else row["department_id"]
        caps[(row["scope"], subject)] = (
            # Never below 0: -1 means "no limit" to the admission script, and compute past the budget
            # leaves no room for calls at all.
            max(0, int((row["amount"] - other) * MICROS)),
            max(0, int(tokens * MICROS)),
        )
    return caps


def check_can_spend(team: Team) -> None:
    """Refuse (Conflict) to start spending for ``team`` -- a job, a new deployment, more replicas -- when
    its or its department's hard-limited budget is already used up this month."""
    from portfolio.billing.spend import month_to_date

    budgets = list(
        Budget.objects.filter(hard_limit=True).filter(
            Q(team_id=team.pk) | Q(department_id=team.department_id)
        )
    )
    if not budgets:
        return
    spend = month_to_date(department_ids=[team.department_id])
    for budget in budgets:
        if budget.team_id is not None:
            spent, whose = spend.of_team(team.pk), f"team {team.slug}"
        else:
            spent, whose = spend.of_department(team.department_id), "the department"
        if spent >= budget.amount:
            raise Conflict(
                f"The monthly budget of {whose} ({budget.amount} {settings.BILLING_CURRENCY}) is used up "
                f"({spent} spent) and is a hard limit: nothing new may start until next month or a higher "
                "budget.",
                code="budget_exceeded",
            )
