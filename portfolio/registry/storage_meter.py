"""The storage meter: artifact bytes per owning team, written into billing's ledger once a day.

Artifacts are content-addressed, and so are the files in them (blobs): one set of files may back versions of
several teams, and one file several artifacts (a version with a new chat template shares every file of its
parent but one). Each blob is charged once, to the team that kept an artifact holding it first, so that a
day's rows add up to what the store holds. The
registry sees model versions; the apps above it tell it who else keeps artifacts (training: dataset
versions and job checkpoints) through ``ARTIFACT_OWNERS``, registered in their ``AppConfig.ready``.
Artifacts nothing refers to any longer are charged to nobody.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime

from django.conf import settings
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.billing import meters
from portfolio.registry.models import Artifact, ModelVersion

# Each gives (artifact id, owning team id, since when it is kept) for artifacts an app above keeps.
ARTIFACT_OWNERS: list[Callable[[], Iterable[tuple[str, int, datetime]]]] = []


def _model_versions() -> Iterable[tuple[str, int, datetime]]:
    return ModelVersion.objects.exclude(artifact=None).values_list(
        "artifact_id", "model__owner_team_id", "created_at"
    )


def keepers() -> dict[str, tuple[datetime, int]]:
    """Artifact id -> (since when, team) of the team that kept it first (ties: the lowest team id)."""
    first: dict[str, tuple[datetime, int]] = {}
    for source in (_model_versions, *ARTIFACT_OWNERS):
        for artifact_id, team_id, since in source():
            if (
                artifact_id
                and team_id
                and (artifact_id not in first or (since, team_id) < first[artifact_id])
            ):
                first[artifact_id] = (since, team_id)
    return first


def usage() -> list[tuple[int, int, str, int]]:
    """(team id, department id, store, bytes) of every team that keeps artifacts, ordered by team."""
    kept = keepers()
    blobs: dict[str, tuple[tuple[datetime, int], int]] = {}  # sha256 -> (its first keeper, its size)
    listed = Artifact.objects.filter(pk__in=list(kept)).values_list("pk", "files")
    for artifact_id, files in listed.iterator(chunk_size=200):
        keeper = kept[artifact_id]
        for entry in files:
            found = blobs.get(entry["sha256"])
            if found is None or keeper < found[0]:
                blobs[entry["sha256"]] = (keeper, int(entry["size"]))
    per_team: dict[int, int] = defaultdict(int)
    for (_, team_id), size in blobs.values():
        per_team[team_id] += size
    departments = dict(Team.objects.filter(pk__in=list(per_team)).values_list("pk", "department_id"))
    return [
        (team_id, departments[team_id], settings.ARTIFACT_STORE, size)
        for team_id, size in sorted(per_team.items())
        if team_id in departments
    ]


def record(day: date | None = None) -> int:
    """Write ``day``'s (today's, UTC) stored bytes per team; a rerun the same day replaces them."""
    return meters.record_storage_day(day or timezone.now().date(), usage())
