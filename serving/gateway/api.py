"""REST endpoints for team API keys, the team's key policy, and usage.

Keys: ``PATCH /keys/{id}`` changes only the fields given (omitted = unchanged, ``null`` = no limit);
``PUT /keys/{id}`` replaces every changeable field and so requires all of them (a partial PUT is a 422,
never a silent reset). Who may change what is decided in ``serving.gateway.services``.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from django.db.models import Sum
from django.db.models.functions import TruncDay
from django.http import HttpResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from portfolio.billing import money
from portfolio.errors import Invalid
from serving.gateway import services
from serving.gateway.models import ApiKey, KeyPolicy, UsageHourly
from serving.gateway.services import LIMIT_BOUNDS, MAX_ALLOWED_IPS, MAX_SCOPES

router = Router(tags=["gateway"])


def _bounds(field: str) -> dict[str, Any]:
    low, high = LIMIT_BOUNDS[field]
    return {"ge": low, "le": high}


# Type aliases written out (not made by a function) so that type checkers read them as types too.
Rpm = Annotated[int, Field(**_bounds("rpm_limit"), description="Requests per minute; null: no limit.")]
Tpm = Annotated[
    int, Field(**_bounds("tpm_limit"), description="Input and output tokens per minute; null: no limit.")
]
MonthlyTokens = Annotated[
    int,
    Field(**_bounds("monthly_token_budget"), description="Tokens per calendar month (UTC); null: no limit."),
]
MonthlyMoney = Annotated[
    Decimal,
    Field(
        **_bounds("monthly_budget"),
        max_digits=12,
        decimal_places=2,
        description="Money per calendar month, in the price book's currency; null: no limit.",
    ),
]
Scopes = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=63)]],
    Field(
        max_length=MAX_SCOPES,
        description="Endpoint names the key's team may call (its own, shared with it); empty: all of them.",
    ),
]
AllowedIps = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=49)]],
    Field(max_length=MAX_ALLOWED_IPS, description="IP addresses or CIDR ranges; empty: any address."),
]


class KeyOut(Schema):
    id: int
    team_id: int
    name: str
    prefix: str = Field(alias="display_prefix")
    scopes: list[str]
    allowed_ips: list[str]
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_token_budget: int | None
    monthly_budget: Decimal | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class KeyIn(Schema):
    """A new key. A limit left out takes the team's key policy ceiling for a developer (no limit for an
    owner or admin); ``null`` asks for no limit, which a developer gets only where the policy sets none."""

    name: str = Field(min_length=1, max_length=100)
    scopes: Scopes = []
    allowed_ips: AllowedIps = []
    rpm_limit: Rpm | None = None
    tpm_limit: Tpm | None = None
    monthly_token_budget: MonthlyTokens | None = None
    monthly_budget: MonthlyMoney | None = None
    expires_at: datetime | None = Field(None, description="A time in the future; without a zone, UTC.")


class KeyCreated(KeyOut):
    key: str = Field(description="Shown once; store it now.")


class KeyPatch(Schema):
    """Only the fields given change; ``null`` removes a limit. Limits and budgets: owners and admins only."""

    scopes: Scopes | None = None
    allowed_ips: AllowedIps | None = None
    rpm_limit: Rpm | None = None
    tpm_limit: Tpm | None = None
    monthly_token_budget: MonthlyTokens | None = None
    monthly_budget: MonthlyMoney | None = None


class KeyReplace(Schema):
    """Every changeable field of a key, all required (``null``: no limit). Limits and budgets that differ
    from the key's need an owner or admin."""

    scopes: Scopes
    allowed_ips: AllowedIps
    rpm_limit: Rpm | None
    tpm_limit: Tpm | None
    monthly_token_budget: MonthlyTokens | None
    monthly_budget: MonthlyMoney | None


class KeyPolicyOut(Schema):
    """The most each key a developer of the team creates may have; null: no ceiling."""

    team_id: int
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_token_budget: int | None
    monthly_budget: Decimal | None
    updated_at: datetime | None

    @staticmethod
    def resolve_updated_at(policy: KeyPolicy) -> datetime | None:
        return policy.updated_at if policy.pk else None


class KeyPolicyPatch(Schema):
    """Only the ceilings given change; ``null`` removes one."""

    rpm_limit: Rpm | None = None
    tpm_limit: Tpm | None = None
    monthly_token_budget: MonthlyTokens | None = None
    monthly_budget: MonthlyMoney | None = None


def _key(request, key_id: int) -> ApiKey:
    return gate.get_visible(request.auth, ApiKey, pk=key_id)


def _given(payload: Schema) -> dict:
    # Omitted fields stay unchanged; an explicit null is passed on as "no limit". A list given as null
    # would mean nothing: it is the same as leaving it out.
    return {
        name: value
        for name, value in payload.dict(exclude_unset=True).items()
        if value is not None or name not in ("scopes", "allowed_ips")
    }


@router.get("/teams/{team_id}/keys", response=list[KeyOut])
@paginate(PageNumberPagination, page_size=50)
def list_keys(request, team_id: int):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    gate.require(request.auth, "apikey.manage", team)
    return team.api_keys.order_by("-created_at", "-id")


@router.post("/teams/{team_id}/keys", response={201: KeyCreated})
def create_key(request, team_id: int, payload: KeyIn, response: HttpResponse):
    add_never_cache_headers(response)  # the answer holds the key: no cache may keep it
    team = gate.get_visible(request.auth, Team, pk=team_id)
    key, secret = services.create_key(actor=request.auth, team=team, **_given(payload))
    key.key = secret  # type: ignore[attr-defined]  # the secret, shown once: read by KeyCreated, never stored
    return Status(201, key)


@router.patch("/keys/{key_id}", response=KeyOut)
def update_key(request, key_id: int, payload: KeyPatch):
    """Change only the fields given."""
    return services.update_key(actor=request.auth, key=_key(request, key_id), **_given(payload))


@router.put("/keys/{key_id}", response=KeyOut)
def replace_key(request, key_id: int, payload: KeyReplace):
    """Replace every changeable field; all are required."""
    return services.update_key(actor=request.auth, key=_key(request, key_id), **payload.dict())


@router.delete("/keys/{key_id}", response=KeyOut)
def revoke_key(request, key_id: int):
    """Revoked at once in every gateway process."""
    return services.revoke_key(actor=request.auth, key=_key(request, key_id))


@router.get("/teams/{team_id}/key-policy", response=KeyPolicyOut)
def get_key_policy(request, team_id: int):
    """The ceilings of the team's developers' keys; any member of the team may read them."""
    return services.policy_for(gate.get_visible(request.auth, Team, pk=team_id))


@router.patch("/teams/{team_id}/key-policy", response=KeyPolicyOut)
def update_key_policy(request, team_id: int, payload: KeyPolicyPatch):
    """Owners and admins set the ceilings; what is left out stays."""
    team = gate.get_visible(request.auth, Team, pk=team_id)
    return services.update_key_policy(actor=request.auth, team=team, **payload.dict(exclude_unset=True))


class UsageDay(Schema):
    day: datetime
    group: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    audio_seconds: Decimal = Field(
        description="Seconds of audio sent to speech models (billed by the second: those calls have no "
        "tokens)."
    )
    cost: Decimal


MAX_USAGE_ROWS = 20_000  # (day, group) rows one answer of /usage holds


@router.get("/usage", response=list[UsageDay])
def usage(
    request,
    team_id: int | None = None,
    days: int = 30,
    group_by: Literal["endpoint", "team", "key"] = "endpoint",
):
    """Daily usage from the hourly rollups, for the teams the caller may see, grouped by endpoint, team or key."""
    rows = UsageHourly.objects.filter(hour__gte=timezone.now() - timedelta(days=max(1, min(days, 366))))
    teams = gate.visible(request.auth, Team).values("pk")
    rows = rows.filter(team_id__in=teams)
    if team_id is not None:
        rows = rows.filter(team_id=team_id)
    field = {"endpoint": "endpoint", "team": "team_id", "key": "api_key_id"}[group_by]
    grouped = (
        rows.annotate(day=TruncDay("hour"))
        .values("day", field)
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            audio_ms=Sum("audio_ms"),
            cost=Sum("cost"),
        )
        .order_by("day", field)
    )
    found = list(grouped[: MAX_USAGE_ROWS + 1])
    if len(found) > MAX_USAGE_ROWS:
        # A year by key of a large organisation is hundreds of thousands of rows: built in memory and sent
        # in one answer. Refused whole rather than cut short, so no total reads as complete when it is not.
        raise Invalid(
            f"More than {MAX_USAGE_ROWS} days x {group_by} rows: ask for fewer days, one team (team_id) or "
            "a coarser group_by, or use the billing exports."
        )
    return [
        {**row, "group": str(row[field]), "audio_seconds": money.seconds(row["audio_ms"])} for row in found
    ]
