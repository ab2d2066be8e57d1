from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts.models import Team
from portfolio.accounts.scoping import TeamScopedQuerySet
from portfolio.registry.choices import Family, Health, Source, Task, VersionKind, VersionStatus, Visibility

if TYPE_CHECKING:
    from portfolio.registry.hashing import Manifest

model_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{1,79}\Z", "Use 2-80 lower-case letters, digits, dots, dashes or underscores."
)
alias_validator = RegexValidator(r"^[a-z][a-z0-9-]{0,31}\Z", "Use lower-case letters, digits and dashes.")


def _shared_with(team_ids, department_ids) -> Q:
    """The visibility rule: a team's own models, those shared with its department, the organisation's."""
    return (
        Q(owner_team_id__in=team_ids)
        | Q(visibility=Visibility.DEPARTMENT, owner_team__department_id__in=department_ids)
        | Q(visibility=Visibility.ORGANISATION)
    )


class ModelQuerySet(TeamScopedQuerySet):
    def visible_to(self, actor) -> ModelQuerySet:
        """What a person may see: the models shared with any of their teams (everything, org-wide)."""
        if actor.is_org_wide:
            return self
        if actor.user is None:
            return self.none()
        departments = Team.objects.filter(id__in=actor.team_ids).values("department_id")
        return self.filter(_shared_with(actor.team_ids, departments))

    def shared_with_team(self, team: Team) -> ModelQuerySet:
        """What a team may serve or train, whoever acts for it (seeing a model is not enough to use it)."""
        return self.filter(_shared_with([team.pk], [team.department_id]))


class Model(models.Model):
    """A named model in the catalogue, owned by a team, with its versions."""

    name = models.CharField(max_length=80, unique=True, validators=[model_name_validator])
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.CHAT)
    description = models.TextField(blank=True)
    owner_team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="models")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.TEAM)
    tags = ArrayField(models.CharField(max_length=40), default=list, blank=True)
    license = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            # Catalogue filters: by team and task.
            models.Index(fields=["owner_team", "task"], name="registry_model_team_task"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def team(self) -> Team:
        return self.owner_team

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "owner_team": self.owner_team.slug,
            "visibility": self.visibility,
            "tags": list(self.tags),
            "license": self.license,
            "description": self.description,
        }


class ArtifactManager(models.Manager["Artifact"]):
    def record(self, manifest: Manifest, store_uri: str, *, verified: bool = True) -> Artifact:
        """The row of the files of ``manifest``, stored at ``store_uri``: the existing one when the same
        files were stored before. ``verified``: their checksums were just checked (health OK, now)."""
        defaults = {
            "store_uri": store_uri,
            "size_bytes": manifest.total_size,
            "file_count": len(manifest.files),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        }
        if verified:
            defaults |= {"health": Health.OK, "verified_at": timezone.now()}
        artifact, _ = self.get_or_create(id=manifest.artifact_id, defaults=defaults)
        return artifact


class Artifact(models.Model):
    """A content-addressed set of files in the artifact store, named by the sha256 of its manifest."""

    id = models.CharField(max_length=64, primary_key=True)
    store_uri = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField()
    file_count = models.PositiveIntegerField()
    files = models.JSONField(help_text="The manifest: [{path, size, sha256}]")
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_detail = models.TextField(blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ArtifactManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"artifact {self.id[:12]}"

    def manifest(self):
        from portfolio.registry.hashing import FileEntry, Manifest

        return Manifest.of(FileEntry(f["path"], f["size"], f["sha256"]) for f in self.files)


class ModelVersionQuerySet(models.QuerySet):
    def visible_to(self, actor) -> ModelVersionQuerySet:
        return self.filter(model__in=Model.objects.visible_to(actor))

    def shared_with_team(self, team: Team) -> ModelVersionQuerySet:
        return self.filter(model__in=Model.objects.shared_with_team(team))


class ModelVersion(models.Model):
    """One immutable version of a model: base weights or an adapter, with lineage and metadata."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=VersionKind.choices, default=VersionKind.BASE)
    base_version = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adapters",
        help_text="The base an adapter applies to",
    )
    parent_version = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="derived",
        help_text="The version this one was derived from",
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField(
        max_length=500, blank=True, help_text="Hub repo@revision, path, file or job"
    )
    import_options = models.JSONField(default=dict, blank=True)
    artifact = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="versions"
    )
    format = models.CharField(max_length=40, blank=True)
    architecture = models.CharField(max_length=100, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=30, blank=True)
    quantization = models.CharField(max_length=40, blank=True)
    # Set from the files at every import (adapters: from their base, whose tokenizer serves them). Without
    # a template engines refuse chat calls, so the gateway refuses them first. The default only applies to
    # rows no import inspected (created directly, as test fixtures do).
    has_chat_template = models.BooleanField(default=True)
    shape = models.JSONField(
        default=dict, blank=True, help_text="Layers, heads, hidden size: for memory estimates"
    )
    family = models.CharField(max_length=20, choices=Family.choices, blank=True)
    architecture_facts = models.JSONField(
        default=dict,
        blank=True,
        help_text="Experts, state and attention layers, vision tower: read from the config at import",
    )
    metrics = models.JSONField(default=dict, blank=True)
    model_card = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.IMPORTING)
    status_detail = models.TextField(blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    progress_detail = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ready_at = models.DateTimeField(null=True, blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["model__name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique_per_model"),
            models.CheckConstraint(
                condition=Q(kind=VersionKind.BASE, base_version__isnull=True)
                | Q(kind=VersionKind.ADAPTER, base_version__isnull=False),
                name="adapter_has_a_base_and_base_has_none",
            ),
        ]
        indexes = [
            # The import reaper: versions importing with an old heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="registry_version_status"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def team(self) -> Team:
        return self.model.owner_team

    @property
    def label(self) -> str:
        return f"{self.model.name}:v{self.number}"

    def snapshot(self) -> dict:
        return {
            "model": self.model.name,
            "number": self.number,
            "kind": self.kind,
            "base_version": self.base_version.label if self.base_version else None,
            "source": self.source,
            "source_ref": self.source_ref,
            "status": self.status,
            "artifact": self.artifact_id,
        }


class Alias(models.Model):
    """A movable name for one version of a model, such as ``production`` or ``staging``."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=32, validators=[alias_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["model__name", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name} -> v{self.version.number}"


class PendingWrite(models.Model):
    """What a registration in flight has written to the artifact store and not yet recorded: deleted by
    ``pending_writes.sweep`` if its run died before recording it or deleting it (registry/pending_writes.py)."""

    token = models.CharField(max_length=32, unique=True)
    owner = models.CharField(max_length=200, help_text="The run that wrote it, for people")
    written = models.JSONField(default=dict, help_text="{blobs: [sha256], manifest}")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["updated_at"]
        # The sweep's query: the rows quiet for a while, oldest first.
        indexes = [models.Index(fields=["updated_at"], name="pending_write_updated_idx")]

    def __str__(self) -> str:
        return f"pending write of {self.owner}"
