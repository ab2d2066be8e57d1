"""REST endpoints for team API keys and usage."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.functions import TruncDay
from django.utils import timezone
from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.models import Team
from serving.gateway import services
from serving.gateway.models import ApiKey, UsageHourly

router = Router(tags=["gateway"])


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
    name: str
    scopes: list[str] = []
    allowed_ips: list[str] = []
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    monthly_token_budget: int | None = None
    monthly_budget: Decimal | None = None
    expires_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="Shown once; store it now.")


class KeyPatch(Schema):
    scopes: list[str] = []
    allowed_ips: list[str] = []
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    monthly_token_budget: int | None = None
    monthly_budget: Decimal | None = None


def _key(request, key_id: int) -> ApiKey:
    return gate.get_visible(request.auth, ApiKey, pk=key_id)


@router.get("/teams/{team_id}/keys", response=list[KeyOut])
@paginate(PageNumberPagination, page_size=50)
def list_keys(request, team_id: int):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    gate.require(request.auth, "apikey.manage", team)
    return team.api_keys.order_by("-created_at", "-id")


@router.post("/teams/{team_id}/keys", response={201: KeyCreated})
def create_key(request, team_id: int, payload: KeyIn):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    key, secret = services.create_key(actor=request.auth, team=team, **payload.dict())
    key.key = secret
    return Status(201, key)


@router.put("/keys/{key_id}", response=KeyOut)
def update_key(request, key_id: int, payload: KeyPatch):
    return services.update_key(actor=request.auth, key=_key(request, key_id), **payload.dict())


@router.delete("/keys/{key_id}", response=KeyOut)
def revoke_key(request, key_id: int):
    """Revoked at once in every gateway process."""
    return services.revoke_key(actor=request.auth, key=_key(request, key_id))


class UsageDay(Schema):
    day: datetime
    group: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


@router.get("/usage", response=list[UsageDay])
def usage(request, team_id: int | None = None, days: int = 30, group_by: str = "endpoint"):
    """Daily usage from the hourly rollups, for the teams the caller may see, grouped by endpoint, team or key."""
    rows = UsageHourly.objects.filter(hour__gte=timezone.now() - timedelta(days=max(1, min(days, 366))))
    teams = gate.visible(request.auth, Team).values("pk")
    rows = rows.filter(team_id__in=teams)
    if team_id is not None:
        rows = rows.filter(team_id=team_id)
    field = {"endpoint": "endpoint", "team": "team_id", "key": "api_key_id"}.get(group_by, "endpoint")
    result: list[dict[str, Any]] = []
    for row in (rows.annotate(day=TruncDay("hour")).values("day", field)
                .annotate(requests=Sum("requests"), errors=Sum("errors"), input_tokens=Sum("input_tokens"),
                          output_tokens=Sum("output_tokens"), cost=Sum("cost")).order_by("day", field)):
        result.append({**row, "group": str(row[field])})
    return result
