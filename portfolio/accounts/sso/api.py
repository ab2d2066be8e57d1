"""REST endpoints for the single sign-on mapping rules (mounted under ``/sso`` by ``accounts.api``)."""

from __future__ import annotations

from datetime import datetime

from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate
from portfolio.accounts.choices import DepartmentRoleName, OrgRole, SsoSourceKind, TeamRole
from portfolio.accounts.models import Department, SsoMappingRule, Team
from portfolio.accounts.sso import rules
from portfolio.errors import Invalid, NotFound

router = Router(tags=["single sign-on"])


class MappingOut(Schema):
    id: int
    kind: SsoSourceKind
    value: str
    team_id: int | None
    team_role: TeamRole | None
    org_role: OrgRole | None
    department_id: int | None
    department_role: DepartmentRoleName | None
    created_at: datetime

    @staticmethod
    def resolve_team_role(rule) -> str | None:
        return rule.team_role or None

    @staticmethod
    def resolve_org_role(rule) -> str | None:
        return rule.org_role or None

    @staticmethod
    def resolve_department_role(rule) -> str | None:
        return rule.department_role or None


class MappingIn(Schema):
    kind: SsoSourceKind
    value: str = Field(
        min_length=1, max_length=255, description="A group's full path (/customer-ops/support-ai) or a role."
    )
    team_id: int | None = None
    team_role: TeamRole | None = None
    org_role: OrgRole | None = None
    department_id: int | None = None
    department_role: DepartmentRoleName | None = None


def _object(model, pk: int | None, field: str):
    if pk is None:
        return None
    obj = model.objects.filter(pk=pk).first()
    if obj is None:
        raise Invalid(f"{field}: No such {model._meta.verbose_name}.", fields={field: ["Not found."]})
    return obj


@router.get("/mappings", response=list[MappingOut])
@paginate(PageNumberPagination, page_size=100)
def list_mappings(request):
    """Permission: ``user.view`` (auditor or platform admin)."""
    gate.require(request.auth, "user.view")
    return SsoMappingRule.objects.order_by("kind", "value", "id")


@router.post("/mappings", response={201: MappingOut})
def create_mapping(request, payload: MappingIn):
    """Permission: ``user.manage`` (platform admin); audited as ``sso_mapping.create``. The rule applies to
    each person at their next sign-in."""
    gate.require(request.auth, "user.manage")
    rule = rules.create_rule(
        actor=request.auth,
        kind=payload.kind,
        value=payload.value,
        team=_object(Team, payload.team_id, "team_id"),
        team_role=payload.team_role or "",
        org_role=payload.org_role or "",
        department=_object(Department, payload.department_id, "department_id"),
        department_role=payload.department_role or "",
    )
    return Status(201, rule)


@router.delete("/mappings/{mapping_id}", response={204: None})
def delete_mapping(request, mapping_id: int):
    """Permission: ``user.manage`` (platform admin); audited as ``sso_mapping.delete``. The access the rule
    gave goes at each person's next sign-in."""
    gate.require(request.auth, "user.manage")
    rule = SsoMappingRule.objects.filter(pk=mapping_id).first()
    if rule is None:
        raise NotFound("Mapping rule not found.")
    rules.delete_rule(actor=request.auth, rule=rule)
    return Status(204, None)
