"""What a team may use. Who acts is checked by the gate; what a deployment (or a training job) uses is
checked against the team that owns it. Otherwise a member of two teams could put one team's deployment on a
pool only the other may use, or serve the other team's private model as the first team's, since they see both."""

from __future__ import annotations

from portfolio.accounts.models import Team
from portfolio.errors import Invalid
from portfolio.registry.models import ModelVersion
from serving.models import ComputePool


# Who acts is checked by the gate; what a deployment (or a training job) uses is checked against the team
# that owns it. Otherwise a member of two teams could put one team's deployment on a pool only the other
# may use, or serve the other team's private model as the first team's, since they see both.
def require_pool_open_to(team: Team, pool: ComputePool) -> None:
    """A pool open to some teams only (``allowed_teams``) takes work of those teams, whoever asks."""
    if pool.allowed_teams.exists() and not pool.allowed_teams.filter(pk=team.pk).exists():
        raise Invalid(
            f"pool: {pool.name} is not open to {team.name}; choose a pool open to the team, or ask a platform "
            "admin to open this one to it.",
            fields={"pool": [f"Not open to {team.name}."]},
        )


def require_usable_by(team: Team, version: ModelVersion, field: str = "version") -> None:
    """``version`` is one ``team`` may serve or train: shared with it, not merely seen by the actor."""
    if not ModelVersion.objects.shared_with_team(team).filter(pk=version.pk).exists():
        raise Invalid(
            f"{field}: {version.label} is not shared with {team.name}; it may use its own models and those "
            "shared with its department or the organisation.",
            fields={field: [f"Not shared with {team.name}."]},
        )
