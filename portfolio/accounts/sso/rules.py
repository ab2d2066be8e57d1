"""Adding and removing single sign-on mapping rules: platform admins only, each change audited.

A rule changes nobody's access at once: ``mapping.apply`` brings each person in line with the rules at their
next sign-in (or at the next directory sync).
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import DepartmentRoleName, OrgRole, SsoSourceKind, TeamRole
from portfolio.accounts.models import Department, SsoMappingRule, Team
from portfolio.accounts.sso.mapping import normalise_group
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(f"{field}: {message}", fields={field: [message]})


def _source(kind: str, value: str) -> tuple[str, str]:
    if kind not in SsoSourceKind.values:
        raise _invalid("kind", f"Choose one of {', '.join(SsoSourceKind.values)}.")
    value = value.strip()
    if kind == SsoSourceKind.GROUP:
        value = normalise_group(value) if value.strip("/") else ""
    if not value or len(value) > 255:
        what = "a group's full path, such as /customer-ops/support-ai" if kind == "group" else "a role name"
        raise _invalid("value", f"Give {what} (at most 255 characters).")
    return kind, value


def _target(
    team: Team | None, team_role: str, org_role: str, department: Department | None, department_role: str
) -> dict:
    given = [team is not None or bool(team_role), bool(org_role), department is not None]
    if sum(given) != 1:
        message = (
            "Choose exactly one target: a team with a team role, an organisation role, "
            "or a department to manage."
        )
        raise Invalid(message, fields={"target": [message]})
    if team is not None or team_role:
        if team is None:
            raise _invalid("team", "Choose the team the role is in.")
        if team_role not in TeamRole.values:
            raise _invalid("team_role", f"Choose one of {', '.join(TeamRole.values)}.")
        return {"team": team, "team_role": team_role}
    if org_role:
        if org_role not in OrgRole.values:
            raise _invalid("org_role", f"Choose one of {', '.join(OrgRole.values)}.")
        return {"org_role": org_role}
    department_role = department_role or DepartmentRoleName.MANAGER
    if department_role not in DepartmentRoleName.values:
        raise _invalid("department_role", f"Choose one of {', '.join(DepartmentRoleName.values)}.")
    return {"department": department, "department_role": department_role}


@transaction.atomic
def create_rule(
    *,
    actor: Actor,
    kind: str,
    value: str,
    team: Team | None = None,
    team_role: str = "",
    org_role: str = "",
    department: Department | None = None,
    department_role: str = "",
) -> SsoMappingRule:
    """A rule giving whoever has the group or role (``kind``, ``value``) exactly one target: a team role,
    an organisation role or a department role. Audited as ``sso_mapping.create``."""
    gate.require(actor, "user.manage")
    kind, value = _source(kind, value)
    rule = SsoMappingRule(
        kind=kind, value=value, **_target(team, team_role, org_role, department, department_role)
    )
    try:
        with transaction.atomic():
            rule.save(force_insert=True)
    except IntegrityError:
        raise Conflict(
            f"A rule already maps {SsoSourceKind(kind).label.lower()} {value} to "
            + ("this team; remove it first to change the role." if team is not None else "this role.")
        ) from None
    audit.record(actor, "sso_mapping.create", rule, after=rule.snapshot())
    return rule


@transaction.atomic
def delete_rule(*, actor: Actor, rule: SsoMappingRule) -> None:
    """Remove a rule (audited as ``sso_mapping.delete``); the access it gave goes at each person's next
    sign-in."""
    gate.require(actor, "user.manage")
    rule = (
        SsoMappingRule.objects.select_for_update(of=("self",))
        .select_related("team", "department")
        .get(pk=rule.pk)
    )
    audit.record(actor, "sso_mapping.delete", rule, before=rule.snapshot())
    rule.delete()
