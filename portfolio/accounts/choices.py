from django.db import models


class TeamRole(models.TextChoices):
    OWNER = "owner", "Owner"
    ENGINEER = "engineer", "Engineer"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class OrgRole(models.TextChoices):
    """Roles that span the whole organisation rather than one team."""

    ADMIN = "admin", "Platform admin"
    AUDITOR = "auditor", "Auditor"
