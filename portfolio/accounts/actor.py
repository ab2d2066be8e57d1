"""Who is acting: a user (through the UI or a personal token), an API key, or the system itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from portfolio.accounts.choices import OrgRole

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass
class Actor:
    """The caller of a service function, with the request metadata that goes into audit rows."""

    user: User | None = None
    token_id: int | None = None
    # Signed in by the realm's access token (a bearer JWT; sso/access_tokens.py), not by a session.
    access_token: bool = False
    api_key_id: int | None = None
    system: str | None = None
    ip: str | None = None
    user_agent: str = ""
    request_id: str | None = None
    _team_roles: dict[int, str] | None = field(default=None, repr=False)

    @classmethod
    def for_request(cls, request, *, token_id: int | None = None) -> Actor:
        from portfolio.requestcontext import client_ip

        user = request.user if request.user.is_authenticated else None
        return cls(
            user=user,
            token_id=token_id,
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:300],
            request_id=getattr(request, "request_id", None),
        )

    @classmethod
    def for_system(cls, name: str, request_id: str | None = None) -> Actor:
        return cls(system=name, request_id=request_id)

    @property
    def kind(self) -> str:
        if self.system:
            return "system"
        if self.api_key_id:
            return "api_key"
        if self.token_id:
            return "token"
        if self.access_token:
            return "access_token"
        return "user"

    @property
    def label(self) -> str:
        if self.system:
            return f"system:{self.system}"
        if self.user is None:
            return "anonymous"
        return self.user.get_username()

    @cached_property
    def _grants(self) -> tuple[frozenset[str], frozenset[int]]:
        """The user's organisation roles and the departments they manage, in one query (every request
        asks both: the navigation's billing link is held by department managers too)."""
        if self.system or self.user is None or not self.user.is_active:
            return frozenset(), frozenset()
        from django.db.models import BigIntegerField, CharField, Value

        from portfolio.accounts.models import DepartmentRole, OrgRoleGrant

        org = OrgRoleGrant.objects.filter(user=self.user).values_list(
            "role", Value(None, output_field=BigIntegerField())
        )
        managed = DepartmentRole.objects.filter(user=self.user).values_list(
            Value("", output_field=CharField()), "department_id"
        )
        rows = list(org.union(managed, all=True))
        return (
            frozenset(role for role, department in rows if department is None),
            frozenset(department for _, department in rows if department is not None),
        )

    @cached_property
    def org_roles(self) -> frozenset[str]:
        if self.system:
            return frozenset({OrgRole.ADMIN})
        if self.user is None or not self.user.is_active:
            return frozenset()
        roles = set(self._grants[0])
        if self.user.is_superuser:
            roles.add(OrgRole.ADMIN)
        return frozenset(roles)

    @property
    def team_roles(self) -> dict[int, str]:
        if self._team_roles is None:
            if self.user is None or not self.user.is_active:
                self._team_roles = {}
            else:
                self._team_roles = dict(self.user.memberships.values_list("team_id", "role"))
        return self._team_roles

    @cached_property
    def managed_department_ids(self) -> frozenset[int]:
        """Departments this user manages (department managers read and budget all their teams)."""
        return self._grants[1]

    @property
    def team_ids(self) -> list[int]:
        return list(self.team_roles)

    @property
    def is_admin(self) -> bool:
        return OrgRole.ADMIN in self.org_roles

    @property
    def is_auditor(self) -> bool:
        return OrgRole.AUDITOR in self.org_roles

    @property
    def is_org_wide(self) -> bool:
        """Sees every team's objects: platform admins and auditors (auditors read-only)."""
        return self.is_admin or self.is_auditor
