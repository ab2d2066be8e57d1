"""Web pages of the gateway: team API keys (the secret shown once, limits and budgets, revocation), each
team's key policy (the ceilings of its developers' keys), and the usage dashboard (charts per day and
tables by team, endpoint and key, from the hourly rollups).

Every view decides access with the gate: lists start from ``gate.visible``, a key the actor may not see
answers 404 (``gate.get_visible``), a change needs ``apikey.manage`` on the key or its team
(``gate.require``), else 403; limits, budgets and the key policy need ``apikey.limits`` (owners, admins):
a developer sees them, cannot change them; the docstrings say which. Changes go through ``serving.gateway.services``;
a ``DomainError`` becomes a form error, while ``NotFound`` and ``Forbidden`` propagate to Django's 404
and 403 pages. A key's secret is rendered straight into the one response that creates it: never the
session, messages or logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.contrib import messages
from django.db.models import BigIntegerField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import TruncDay
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Team
from portfolio.billing import money
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.formviews import submit
from serving.forms.base import apply_serving_error
from serving.gateway import charts, services
from serving.gateway.creators import with_creator
from serving.gateway.forms import DEFAULT_PERIOD, KeyCreateForm, KeyEditForm, KeyPolicyForm, UsageFilterForm
from serving.gateway.models import ApiKey, KeyPolicy, UsageHourly
from serving.models import Endpoint
from serving.views.display import fill

TABLE_ROWS = 50
ENDPOINT_CHOICE_DAYS = 90
KEY_CHOICES = 200
EXCEEDING_SHOWN = 20
GET_POST = require_http_methods(["GET", "POST"])


def month_start(now: datetime | None = None) -> datetime:
    """The start of the calendar month (UTC) that budgets and "this month" count from."""
    now = now or timezone.now()
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _aggregates() -> dict:
    """The sums every usage figure is made of; latency percentiles weighted by each hour's requests."""
    return {
        "requests_sum": Sum("requests"),
        "errors_sum": Sum("errors"),
        "input_sum": Sum("input_tokens"),
        "output_sum": Sum("output_tokens"),
        "audio_sum": Sum("audio_ms"),
        "latency_sum": Sum("latency_ms_sum"),
        "cost_sum": Sum("cost"),
        **{
            name: Sum(ExpressionWrapper(F(field) * F("requests"), output_field=BigIntegerField()))
            for name, field in (("p50_weighted", "latency_p50_ms"), ("p95_weighted", "latency_p95_ms"))
        },
    }


def _figures(row: dict) -> dict:
    """Sums as people read them: tokens together, seconds of audio (speech calls have no tokens: they are
    billed by the second), an error rate, latencies averaged over requests."""
    requests = row.get("requests_sum") or 0
    errors = row.get("errors_sum") or 0
    input_tokens, output_tokens = row.get("input_sum") or 0, row.get("output_sum") or 0

    def per_request(total) -> int:
        return round((total or 0) / requests) if requests else 0

    return {
        "requests": requests,
        "errors": errors,
        "error_rate": f"{100 * errors / requests:.1f}" if requests else "0.0",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens": input_tokens + output_tokens,
        "audio_seconds": money.seconds(row.get("audio_sum")),  # exact: the rollups count ms
        "latency_avg": per_request(row.get("latency_sum")),
        "p50": per_request(row.get("p50_weighted")),
        "p95": per_request(row.get("p95_weighted")),
        "cost": row.get("cost_sum") or 0,
    }


# --- API keys --------------------------------------------------------------------------------------
def _key_status(key: ApiKey) -> str:
    if key.revoked_at:
        return "revoked"
    return "active" if key.is_active else "expired"


def _budget_bar(used, budget) -> dict | None:
    if not budget:
        return None
    return fill(float(used), float(budget))


def _with_month_usage(keys: list[ApiKey]) -> None:
    """Each key's use this calendar month (requests, tokens, seconds of audio, cost), in one query over the
    rollups."""
    rows = (
        UsageHourly.objects.filter(api_key_id__in=[k.pk for k in keys], hour__gte=month_start())
        .values("api_key_id")
        .annotate(
            requests=Sum("requests"),
            tokens=Sum(F("input_tokens") + F("output_tokens")),
            audio_ms=Sum("audio_ms"),
            cost=Sum("cost"),
        )
    )
    usage = {row["api_key_id"]: row for row in rows}
    for key in keys:
        row: Mapping[str, Any] = usage.get(key.pk, {})
        key.month_requests = row.get("requests") or 0
        key.month_tokens = row.get("tokens") or 0
        key.month_audio_seconds = money.seconds(row.get("audio_ms"))  # speech calls: no tokens
        key.month_cost = row.get("cost") or 0
        key.status = _key_status(key)
        key.token_bar = _budget_bar(key.month_tokens, key.monthly_token_budget)
        key.money_bar = _budget_bar(key.month_cost, key.monthly_budget)


def _key_teams(actor: Actor) -> list[Team]:
    """The teams whose keys the page lists: those the actor manages keys of; every team for org-wide roles
    (read-only where the actor may not manage them, as for auditors)."""
    teams = gate.visible(actor, Team) if actor.is_org_wide else gate.allowed(actor, Team, "apikey.manage")
    return list(teams.select_related("department").order_by("name", "id"))


@require_GET
def key_list(request):
    """Permission: any signed-in user; the page lists the keys of the teams where the actor has
    ``apikey.manage`` (owner or developer), and every team's keys read-only to auditors."""
    actor = actor_of(request)
    teams = _key_teams(actor)
    keys = with_creator(ApiKey.objects.filter(team__in=teams)).order_by(
        "team__name", "team_id", "-created_at", "-id"
    )
    page = listing.paginate(request, keys)
    page.object_list = list(page.object_list)
    _with_month_usage(page.object_list)
    by_team: dict[int, list[ApiKey]] = {}
    for key in page.object_list:
        by_team.setdefault(key.team_id, []).append(key)
    with_keys = set(ApiKey.objects.filter(team__in=teams).values_list("team_id", flat=True).distinct())
    policies = {policy.team_id: policy for policy in KeyPolicy.objects.filter(team__in=teams)}
    sections = []
    for team in teams:
        # A team without keys is listed (on the first page) for its members, who may create the first one;
        # org-wide roles see the teams that have keys.
        empty_here = page.number == 1 and team.pk not in with_keys and team.pk in actor.team_roles
        if team.pk in by_team or empty_here:
            can_manage = gate.can(actor, "apikey.manage", team)
            policy = policies.get(team.pk) or KeyPolicy(team=team)
            sections.append(
                {
                    "team": team,
                    "keys": by_team.get(team.pk, []),
                    "can_manage": can_manage,
                    "can_set_limits": gate.can(actor, "apikey.limits", team),
                    "ceilings": policy.ceilings(),
                }
            )
    return render(
        request,
        "gateway/key_list.html",
        {
            "page": page,
            "sections": sections,
            "can_create": any(section["can_manage"] for section in sections),
            "month": month_start(),
            "gateway_url": request.build_absolute_uri("/v1"),
        },
    )


def _example_model(key: ApiKey) -> str:
    if key.scopes:
        return key.scopes[0]
    first = Endpoint.objects.callable_by(key.team).order_by("name").values_list("name", flat=True).first()
    return first or ""


# The secret also sits in `result` and in the helpers' frames below this one: mask every frame's locals.
@sensitive_variables()
@never_cache
@GET_POST
def key_create(request):
    """Permission: ``apikey.manage`` in some team (owner or developer), and in the team chosen: a team the
    actor may not see answers 404, one they may see but not manage keys of 403. Without ``apikey.limits``
    (a developer) an empty limit takes the team policy's ceiling and a value above it is refused. The
    secret is shown once, in this response, which no cache keeps (Cache-Control: no-store)."""
    actor = actor_of(request)
    gate.require(actor, "apikey.manage")
    if request.method == "POST":
        if request.POST.get("team"):
            team = gate.get_visible(actor, Team, pk=request.POST["team"])
            gate.require(actor, "apikey.manage", team)
        form = KeyCreateForm(request.POST, actor=actor)
    else:
        initial = {"team": request.GET["team"]} if request.GET.get("team") else None
        form = KeyCreateForm(initial=initial, actor=actor)

    def create() -> tuple[ApiKey, str]:
        team = form.cleaned_data["team"]
        return services.create_key(
            actor=actor,
            team=team,
            name=form.cleaned_data["name"],
            expires_at=form.expires_at(),
            **form.limits(omit_empty=not gate.can(actor, "apikey.limits", team)),
        )

    def created(result: tuple[ApiKey, str]):
        key, secret = result
        # Rendered straight into this response: never the session, messages or logs.
        return render(
            request,
            "gateway/key_created.html",
            {
                "key": key,
                "secret": secret,
                "base_url": request.build_absolute_uri("/v1"),
                "model": _example_model(key),
            },
        )

    shown = submit(
        request,
        form,
        create,
        then=created,
        refused=lambda form, exc: apply_serving_error(form, exc, {"expires_at": "expires_on"}),
    )
    if shown is not None:
        return shown
    return render(request, "gateway/key_form.html", {"form": form})


def _managed_key(request, pk: int) -> tuple[Actor, ApiKey]:
    actor = actor_of(request)
    try:  # gate.get_visible's 404, with the creator's standing (the edit page's "left") in the same query
        key = with_creator(gate.visible(actor, ApiKey)).get(pk=pk)
    except (ApiKey.DoesNotExist, ValueError, TypeError):
        raise NotFound("Api key not found.") from None
    gate.require(actor, "apikey.manage", key)
    return actor, key


@GET_POST
def key_edit(request, pk: int):
    """Permission: the key is visible (its team's members, org-wide roles), else 404, and ``apikey.manage``
    on it (owner or developer of its team), else 403. Changes scopes and addresses; limits and budgets
    too with ``apikey.limits`` (owners, admins): a developer sees them locked. A revoked key can no longer
    be changed."""
    actor, key = _managed_key(request, pk)
    can_set_limits = gate.can(actor, "apikey.limits", key)
    if request.method == "POST" and key.revoked_at is None:
        form = KeyEditForm(request.POST, key=key)
        if not can_set_limits:
            form.lock_limits()
        saved = submit(
            request,
            form,
            lambda: services.update_key(actor=actor, key=key, **form.limits()),
            success=lambda _: f"Key “{key.name}” saved; the gateway applies it within seconds.",
            then=lambda _: redirect("apikey-list"),
            refused=apply_serving_error,
        )
        if saved is not None:
            return saved
    else:
        if request.method == "POST":
            messages.error(request, f"Key “{key.name}” is revoked; its limits can no longer be changed.")
        form = KeyEditForm(key=key)
        if not can_set_limits:
            form.lock_limits()
    _with_month_usage([key])
    return render(request, "gateway/key_edit.html", {"form": form, "key": key, "month": month_start()})


@GET_POST
def key_revoke(request, pk: int):
    """Permission: visible (else 404) and ``apikey.manage`` (owner or developer, else 403). GET asks to
    confirm; the revocation is refused at once by every gateway process."""
    actor, key = _managed_key(request, pk)
    if request.method == "POST":
        try:
            services.revoke_key(actor=actor, key=key)
        except (Invalid, Conflict, Forbidden) as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Key “{key.name}” revoked; calls with it are refused from now on.")
        return redirect("apikey-list")
    key.status = _key_status(key)
    return render(request, "gateway/key_revoke.html", {"key": key})


@GET_POST
def key_policy(request, slug: str):
    """Permission: the team is visible (its members, org-wide roles), else 404; GET shows the ceilings of
    the team's developers' keys, POST changes them with ``apikey.limits`` (owners, admins), else 403.
    Existing keys keep their limits."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, slug=slug)
    can_set_limits = gate.can(actor, "apikey.limits", team)
    policy = services.policy_for(team)
    if request.method == "POST":
        gate.require(actor, "apikey.limits", team)
        form = KeyPolicyForm(request.POST, policy=policy)
        saved = submit(
            request,
            form,
            lambda: services.update_key_policy(actor=actor, team=team, **form.cleaned_data),
            success=f"Key policy of {team.name} saved; it applies to keys created from now on.",
            then=lambda _: redirect("apikey-list"),
            refused=apply_serving_error,
        )
        if saved is not None:
            return saved
    else:
        form = KeyPolicyForm(policy=policy)
        if not can_set_limits:
            for field in form.fields.values():
                field.disabled = True
    exceeding = _exceeding(actor, team, policy)
    return render(
        request,
        "gateway/key_policy.html",
        {
            "team": team,
            "form": form,
            "policy": policy,
            "can_set_limits": can_set_limits,
            "exceeding": exceeding[:EXCEEDING_SHOWN],
            "exceeding_count": len(exceeding),
        },
    )


def _exceeding(actor: Actor, team: Team, policy: KeyPolicy) -> list[ApiKey]:
    """The team's usable keys with more than the policy allows (set by an owner, or made before it), of
    those the actor may see: a department manager sees the team's page but not its keys."""
    over = Q()
    for name, ceiling in policy.ceilings().items():
        if ceiling is not None:
            over |= Q(**{f"{name}__isnull": True}) | Q(**{f"{name}__gt": ceiling})
    if not over:
        return []
    keys = gate.visible(actor, ApiKey).filter(over, team=team, revoked_at__isnull=True)
    return list(keys.order_by("name", "id"))


# --- Usage -----------------------------------------------------------------------------------------
def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _daily(rows, days: list[date]) -> list[dict]:
    """One figure set per day of the period, zeros where nothing was called."""
    by_day = {
        row["day"].date(): _figures(row)
        for row in rows.annotate(day=TruncDay("hour", tzinfo=UTC))
        .values("day")
        .annotate(**_aggregates())
        .order_by("day")
    }
    empty = _figures({})
    return [{"day": day, **by_day.get(day, empty)} for day in days]


def _charts(daily: list[dict]) -> dict:
    days = [row["day"] for row in daily]

    def series(label: str, field: str, tone: str) -> charts.Series:
        return charts.Series(label, [row[field] for row in daily], tone)

    idle = [row["requests"] == 0 for row in daily]
    return {
        "tokens": charts.bar_chart(
            days, [series("Input", "input_tokens", "input"), series("Output", "output_tokens", "output")]
        ),
        "requests": charts.bar_chart(days, [series("Requests", "requests", "requests")]),
        "errors": charts.bar_chart(days, [series("Errors", "errors", "errors")]),
        "latency": charts.line_chart(
            days, [series("p50", "p50", "p50"), series("p95", "p95", "p95")], unit="ms", gaps=idle
        ),
    }


def _by(rows, field: str) -> list[dict]:
    grouped = rows.values(field).annotate(**_aggregates()).order_by("-requests_sum", field)[:TABLE_ROWS]
    return [{"group": row[field], **_figures(row)} for row in grouped]


def _usage_context(actor: Actor, form: UsageFilterForm) -> dict:
    data = form.cleaned_data
    period = data["days"]
    today = timezone.now().astimezone(UTC).date()
    first = today - timedelta(days=period - 1)
    visible = UsageHourly.objects.filter(team_id__in=gate.visible(actor, Team).values("pk"))
    rows = visible.filter(hour__gte=datetime.combine(first, datetime.min.time(), tzinfo=UTC))
    if data["team"]:
        rows = rows.filter(team_id=data["team"].pk)
    if data["endpoint"]:
        rows = rows.filter(endpoint=data["endpoint"])
    if data["key"]:
        rows = rows.filter(api_key_id=data["key"].pk)
    totals = _figures(rows.aggregate(**_aggregates()))
    context = {
        "period": period,
        "first": first,
        "last": today,
        "totals": totals,
        "filtered": _filtered(data),
        # The audio column only where speech models were called: text-only usage keeps its tables.
        "show_audio": bool(totals["audio_seconds"]),
    }
    if not totals["requests"]:
        context["ever_used"] = visible.exists()
        return context
    teams = _by(rows, "team_id")
    names = Team.objects.in_bulk([row["group"] for row in teams if row["group"] is not None])
    for row in teams:
        row["team"] = names.get(row["group"])
    keys = _by(rows, "api_key_id")
    # Named only where the actor sees the key: a department manager sees its teams' usage, not their keys.
    seen_keys = gate.visible(actor, ApiKey).select_related("team")
    key_objects = seen_keys.in_bulk([r["group"] for r in keys if r["group"]])
    for row in keys:
        row["key"] = key_objects.get(row["group"])
    daily = _daily(rows, _days(first, today))
    context |= {
        "charts": _charts(daily),
        "daily": daily,
        "by_team": teams,
        "by_endpoint": _by(rows, "endpoint"),
        "by_key": keys,
        "table_rows": TABLE_ROWS,
    }
    return context


def _filtered(data: dict) -> bool:
    return bool(data.get("team") or data.get("endpoint") or data.get("key"))


@require_GET
def usage(request):
    """Permission: any signed-in user; every figure comes from the hourly rollups of the teams
    ``gate.visible`` shows them (their own teams; every team to org-wide roles). htmx gets the results."""
    actor = actor_of(request)
    since = timezone.now() - timedelta(days=ENDPOINT_CHOICE_DAYS)
    recent = UsageHourly.objects.filter(team_id__in=gate.visible(actor, Team).values("pk"), hour__gte=since)
    endpoints = list(recent.order_by("endpoint").values_list("endpoint", flat=True).distinct())
    # The keys to filter by: those that called in the window, the busiest first (an organisation's every
    # key, revoked and idle ones too, made a select of thousands).
    keys = list(
        recent.filter(api_key__isnull=False)
        .values("api_key")
        .annotate(calls=Sum("requests"))
        .order_by("-calls", "api_key")
        .values_list("api_key", flat=True)[:KEY_CHOICES]
    )
    data = request.GET.copy()
    data.setdefault("days", str(DEFAULT_PERIOD))
    form = UsageFilterForm(data, actor=actor, endpoints=endpoints, keys=keys)
    context = {"form": form}
    if form.is_valid():
        context |= _usage_context(actor, form)
    return htmx.page_or_fragment(
        request, "gateway/usage.html", "gateway/partials/usage_results.html", context
    )
