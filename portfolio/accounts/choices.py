from django.db import models

from portfolio import badges


class TeamRole(models.TextChoices):
    OWNER = "owner", "Owner"
    ENGINEER = "engineer", "Engineer"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class OrgRole(models.TextChoices):
    """Roles that span the whole organisation rather than one team."""

    ADMIN = "admin", "Platform admin"
    AUDITOR = "auditor", "Auditor"


class DepartmentRoleName(models.TextChoices):
    """Roles over one department's teams (their usage, statements and budgets), not over the organisation."""

    MANAGER = "manager", "Department manager"


@badges.toned("credential", active="ok", revoked="danger")
class CredentialStatus(models.TextChoices):
    """Where an API key or a personal token stands; derived from its dates, never stored."""

    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


@badges.toned("account", active="ok")
class AccountStatus(models.TextChoices):
    """Whether a user may sign in (deactivated accounts are kept for the record)."""

    ACTIVE = "active", "Active"
    DEACTIVATED = "deactivated", "Deactivated"


class GrantSource(models.TextChoices):
    """Where a membership or role comes from: granted here, or given by the single sign-on mapping rules
    (then only the rules change it)."""

    LOCAL = "local", "Granted here"
    SSO = "sso", "Single sign-on"


class SsoSourceKind(models.TextChoices):
    """What of a person's single sign-on token a mapping rule matches."""

    GROUP = "group", "Group"
    REALM_ROLE = "realm_role", "Realm role"
    CLIENT_ROLE = "client_role", "Client role"
