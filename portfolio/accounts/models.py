from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from portfolio.accounts.choices import DepartmentRoleName, GrantSource, OrgRole, SsoSourceKind, TeamRole
from portfolio.accounts.scoping import TeamScopedQuerySet

cost_center_validator = RegexValidator(
    r"^[A-Z0-9][A-Z0-9\-]{1,31}\Z", "Use 2-32 capital letters, digits or dashes."
)


class DepartmentQuerySet(TeamScopedQuerySet):
    """A department is seen by the members of its teams and by its managers."""

    team_path = "teams__id"

    def visible_to(self, actor) -> DepartmentQuerySet:
        if actor.is_org_wide or not actor.managed_department_ids:
            return super().visible_to(actor)
        return self.filter(
            models.Q(teams__id__in=actor.team_ids) | models.Q(pk__in=actor.managed_department_ids)
        ).distinct()

    def of_teams(self, team_ids) -> DepartmentQuerySet:
        return super().of_teams(team_ids).distinct()


class Department(models.Model):
    """A cost center: the unit that usage is billed to."""

    name = models.CharField(max_length=100, unique=True)
    cost_center = models.CharField(max_length=32, unique=True, validators=[cost_center_validator])
    created_at = models.DateTimeField(default=timezone.now)

    objects = DepartmentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.cost_center})"

    def snapshot(self) -> dict:
        return {"name": self.name, "cost_center": self.cost_center}


class TeamQuerySet(TeamScopedQuerySet):
    """A team is seen by its members and by the managers of its department."""

    team_path = "id"

    def visible_to(self, actor) -> TeamQuerySet:
        if actor.is_org_wide or not actor.managed_department_ids:
            return super().visible_to(actor)
        return self.filter(
            models.Q(id__in=actor.team_ids) | models.Q(department_id__in=actor.managed_department_ids)
        )


class Team(models.Model):
    """A group of people that owns models, deployments and API keys."""

    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="teams")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["department", "name"], name="team_name_unique_in_department")
        ]

    def __str__(self) -> str:
        return self.name

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "slug": self.slug,
            "department": self.department.cost_center,
            "description": self.description,
        }


class MembershipQuerySet(TeamScopedQuerySet):
    team_path = "team_id"


class Membership(models.Model):
    """A user's role in one team."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=TeamRole.choices)
    # "sso": given by the single sign-on mapping rules, which alone change or remove it (accounts.sso.mapping).
    source = models.CharField(max_length=8, choices=GrantSource.choices, default=GrantSource.LOCAL)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"

    def snapshot(self) -> dict:
        return {"user": self.user.username, "team": self.team.slug, "role": self.role}


class OrgRoleGrant(models.Model):
    """An organisation-wide role (platform admin, auditor) held by a user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="org_roles")
    role = models.CharField(max_length=16, choices=OrgRole.choices)
    # "sso": given by the single sign-on mapping rules, which alone change or remove it (accounts.sso.mapping).
    source = models.CharField(max_length=8, choices=GrantSource.choices, default=GrantSource.LOCAL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["user__username", "role"]
        constraints = [models.UniqueConstraint(fields=["user", "role"], name="one_grant_per_org_role")]

    def __str__(self) -> str:
        return f"{self.user} as {self.role}"

    def snapshot(self) -> dict:
        return {"user": self.user.username, "role": self.role}


class DepartmentRole(models.Model):
    """A user's role over one department: a department manager reads its teams' billing, sets their budgets."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="department_roles"
    )
    department = models.ForeignKey(Department, on_delete=models.CASCADE, related_name="roles")
    role = models.CharField(
        max_length=16, choices=DepartmentRoleName.choices, default=DepartmentRoleName.MANAGER
    )
    # "sso": given by the single sign-on mapping rules, which alone change or remove it (accounts.sso.mapping).
    source = models.CharField(max_length=8, choices=GrantSource.choices, default=GrantSource.LOCAL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["department__name", "user__username"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "department", "role"], name="one_grant_per_department_role"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.department}"

    def snapshot(self) -> dict:
        return {"user": self.user.username, "department": self.department.cost_center, "role": self.role}


class PersonalTokenQuerySet(models.QuerySet):
    def visible_to(self, actor) -> PersonalTokenQuerySet:
        # Tokens are personal: even an admin sees only their own here (admins revoke through user pages).
        if actor.user is None:
            return self.none()
        return self.filter(user=actor.user)

    def active(self) -> PersonalTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class PersonalToken(models.Model):
    """A user's personal access token for scripts calling the REST API; only a keyed hash is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_tokens"
    )
    name = models.CharField(max_length=100)
    # The public part of the token, used to look the row up before the constant-time hash comparison.
    key_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = PersonalTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} (pat_{self.key_id}_…)"

    @property
    def display_prefix(self) -> str:
        return f"pat_{self.key_id}_…"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "user": self.user.username,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked": self.revoked_at is not None,
        }


class ExternalIdentity(models.Model):
    """A user's identity at the single sign-on provider: how a sign-in finds (or creates) its account."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities"
    )
    # The ID token's `iss` and `sub`: together they name one person for good (a user name can be reused).
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    username = models.CharField(max_length=150)  # `preferred_username` at the last sign-in
    created_at = models.DateTimeField(default=timezone.now)
    last_login_at = models.DateTimeField(null=True, blank=True)
    # When the realm issued the newest claims applied to this account (a token's `iat`; a directory sync's
    # time): claims issued before it are older news, and must not grant back a role taken away since.
    claims_issued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Serves the lookup of every sign-in.
            models.UniqueConstraint(fields=["issuer", "subject"], name="external_identity_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.username} at {self.issuer}"


class SsoSession(models.Model):
    """A browser session made by single sign-on, and what the realm calls it: a back-channel logout names its
    ``sid`` (or only the person, by issuer and subject) and the sessions found here are ended."""

    session_key = models.CharField(max_length=40, unique=True)  # Django's session key
    sid = models.CharField(max_length=255, blank=True)  # the ID token's `sid`: the realm's session
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_sessions")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # The two lookups of a logout token: by the realm's session, or by the person.
            models.Index(fields=["issuer", "sid"], name="sso_session_sid"),
            models.Index(fields=["issuer", "subject"], name="sso_session_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} via {self.issuer} ({self.sid or 'no sid'})"


class SsoMappingRule(models.Model):
    """A single sign-on mapping rule: whoever has this Keycloak group or role gets this team role, organisation
    role or department role, for as long as they have it (applied at every sign-in, accounts.sso.mapping)."""

    kind = models.CharField(max_length=16, choices=SsoSourceKind.choices)
    # A group's full path ("/customer-ops/support-ai", stored with its leading slash) or a role's name.
    value = models.CharField(max_length=255)
    # The target: exactly one of a team with a team role, an organisation role, a department with its role.
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT, related_name="sso_rules")
    team_role = models.CharField(max_length=16, choices=TeamRole.choices, blank=True)
    org_role = models.CharField(max_length=16, choices=OrgRole.choices, blank=True)
    department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.PROTECT, related_name="sso_rules"
    )
    department_role = models.CharField(max_length=16, choices=DepartmentRoleName.choices, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "value", "id"]
        # Serves the lookup of every sign-in: the rules matching the person's groups and roles.
        indexes = [models.Index(fields=["kind", "value"], name="sso_rule_source")]
        constraints = [
            models.CheckConstraint(
                name="sso_rule_one_target",
                condition=(
                    models.Q(team__isnull=False, org_role="", department__isnull=True, department_role="")
                    & ~models.Q(team_role="")
                )
                | (
                    models.Q(team__isnull=True, team_role="", department__isnull=True, department_role="")
                    & ~models.Q(org_role="")
                )
                | (
                    models.Q(team__isnull=True, team_role="", org_role="", department__isnull=False)
                    & ~models.Q(department_role="")
                ),
            ),
            # One role per team for one group or role: two would leave the person's role to chance.
            models.UniqueConstraint(
                fields=["kind", "value", "team"], condition=models.Q(team__isnull=False), name="sso_rule_team"
            ),
            models.UniqueConstraint(
                fields=["kind", "value", "org_role"], condition=~models.Q(org_role=""), name="sso_rule_org"
            ),
            models.UniqueConstraint(
                fields=["kind", "value", "department", "department_role"],
                condition=models.Q(department__isnull=False),
                name="sso_rule_department",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.value} → {self.target_label}"

    @property
    def target_label(self) -> str:
        if self.team is not None:
            return f"{TeamRole(self.team_role).label.lower()} of team {self.team.name}"
        if self.org_role:
            return OrgRole(self.org_role).label.lower()
        if self.department is not None:
            return f"{DepartmentRoleName(self.department_role).label.lower()} of {self.department.name}"
        return "nothing"

    def snapshot(self) -> dict:
        return {
            "kind": self.kind,
            "value": self.value,
            "team": self.team.slug if self.team is not None else None,
            "team_role": self.team_role or None,
            "org_role": self.org_role or None,
            "department": self.department.cost_center if self.department is not None else None,
            "department_role": self.department_role or None,
        }


class DirectorySync(models.Model):
    """One run of the directory sync with Keycloak: what it changed, or why it changed nothing."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.CharField(max_length=300, blank=True)
    users_read = models.PositiveIntegerField(default=0)
    deactivated = models.PositiveIntegerField(default=0)
    memberships_changed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"directory sync at {self.started_at:%Y-%m-%d %H:%M} ({'ok' if self.ok else 'failed'})"
