"""Promotion moves an alias (audited, naming the previous holder); versions in use cannot be archived."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Alias, Artifact, ModelVersion
from portfolio.registry.promotion_guard import Finding
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(org, team):
    model = services.create_model(actor=actor_for(org["engineer"]), name="clause-extractor", owner_team=team)
    artifact = Artifact.objects.create(
        id="f" * 64, store_uri="file:///x", size_bytes=1, file_count=1, files=[]
    )
    made = []
    for number in (1, 2):
        made.append(
            ModelVersion.objects.create(
                model=model, number=number, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
            )
        )
    return made


def test_promotion_moves_the_alias_and_the_audit_row_names_the_previous_holder(org, versions):
    v1, v2 = versions
    engineer = actor_for(org["engineer"])
    services.promote(actor=engineer, version=v1, alias="production")
    services.promote(actor=engineer, version=v2, alias="production")
    assert Alias.objects.get(name="production").version == v2
    event = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert event.before == {"alias": "production", "version": "clause-extractor:v1"}
    assert event.after == {"alias": "production", "version": "clause-extractor:v2"}


def test_only_ready_versions_can_be_promoted(org, versions):
    versions[0].status = VersionStatus.FAILED
    versions[0].save(update_fields=["status"])
    with pytest.raises(Conflict, match="only a ready version"):
        services.promote(actor=actor_for(org["owner"]), version=versions[0], alias="staging")


def test_a_viewer_cannot_promote(org, versions):
    with pytest.raises(Forbidden):
        services.promote(actor=actor_for(org["viewer"]), version=versions[0], alias="production")


def test_a_registered_promotion_check_refuses_production_to_a_candidate_in_its_words(
    org, versions, monkeypatch
):
    v1, v2 = versions
    monkeypatch.setattr(
        services, "PROMOTION_CHECKS", [lambda candidate, holder: [Finding("0.100 vs 0.900 on tickets v1")]]
    )
    services.promote(actor=actor_for(org["engineer"]), version=v1, alias="production")
    with pytest.raises(
        Conflict, match=r"scores below the current production clause-extractor:v1 \(0.100 vs 0.900"
    ) as refused:
        services.promote(actor=actor_for(org["engineer"]), version=v2, alias="production")
    assert refused.value.code == "score_regression"
    services.promote(
        actor=actor_for(org["engineer"]), version=v2, alias="staging"
    )  # only production is guarded


def test_training_registers_its_eval_score_check_with_the_registry():
    from training.promotion import score_regressions

    assert services.PROMOTION_CHECKS.count(score_regressions) == 1


def test_a_version_holding_an_alias_cannot_be_archived(org, versions):
    services.promote(actor=actor_for(org["owner"]), version=versions[0], alias="production")
    with pytest.raises(Conflict, match="holds the alias production"):
        services.archive_version(actor=actor_for(org["owner"]), version=versions[0])


def test_a_version_in_use_by_a_deployment_cannot_be_archived(org, team, versions):
    # A real deployment row, asked about through the check serving registers (serving/apps.py): no stub.
    from serving.models import ComputePool, Deployment

    pool = ComputePool.objects.create(name="cpu-pool", kind="cpu")
    deployment = Deployment.objects.create(
        name="support-bot", owner_team=team, version=versions[1], pool=pool, replicas=0
    )
    with pytest.raises(Conflict, match="it is deployed by support-bot"):
        services.archive_version(actor=actor_for(org["owner"]), version=versions[1])
    versions[1].refresh_from_db()
    assert versions[1].status == VersionStatus.READY
    deployment.delete()
    assert (
        services.archive_version(actor=actor_for(org["owner"]), version=versions[1]).status
        == VersionStatus.ARCHIVED
    )


def test_archiving_is_audited(org, versions):
    services.archive_version(actor=actor_for(org["engineer"]), version=versions[1])
    versions[1].refresh_from_db()
    assert versions[1].status == VersionStatus.ARCHIVED
    assert AuditEvent.objects.filter(action="model_version.archive", object_id=str(versions[1].pk)).exists()


def test_a_version_archived_since_it_was_read_is_not_promoted(org, versions):
    """Promote and archive at once: archive saw no alias and committed; promote held the version as read
    before, READY, and pointed an alias at an archived version. Promote now reads it under archive's lock."""
    read_before = ModelVersion.objects.get(pk=versions[1].pk)
    services.archive_version(actor=actor_for(org["owner"]), version=versions[1])
    with pytest.raises(Conflict, match="is archived; only a ready version"):
        services.promote(actor=actor_for(org["owner"]), version=read_before, alias="production")
    assert not Alias.objects.exists()


def test_another_teams_deployments_of_a_shared_version_are_counted_not_named(org, team, other_team, versions):
    from serving.models import ComputePool, Deployment

    pool = ComputePool.objects.create(name="cpu-pool", kind="cpu")
    Deployment.objects.create(name="support-bot", owner_team=team, version=versions[1], pool=pool, replicas=0)
    for name in ("contracts-secret-bot", "contracts-other"):
        Deployment.objects.create(
            name=name, owner_team=other_team, version=versions[1], pool=pool, replicas=0
        )
    with pytest.raises(Conflict) as refused:
        services.archive_version(actor=actor_for(org["owner"]), version=versions[1])
    assert "it is deployed by support-bot, 2 deployments of other teams" in refused.value.message
    assert "contracts" not in refused.value.message


def test_a_base_a_fine_tune_or_merge_is_using_cannot_be_archived(org, team, versions):
    """Archived under a queued or running job, the job would register a ready adapter on an archived base."""
    from serving.models import ComputePool
    from training.choices import JobStatus
    from training.merges.models import MergeJob
    from training.models import Dataset, DatasetVersion, FineTuneJob

    dataset = Dataset.objects.create(name="tickets", owner_team=team)
    rows = DatasetVersion.objects.create(
        dataset=dataset, number=1, shape="chat", artifact=versions[0].artifact, content_sha256="0" * 64,
        row_count=1, train_count=1, eval_count=0, eval_fraction=0.0, split_seed=1, size_bytes=1,
    )  # fmt: skip
    pool = ComputePool.objects.create(name="cpu-pool", kind="cpu")
    job = FineTuneJob.objects.create(
        owner_team=team,
        base_version=versions[0],
        dataset_version=rows,
        target_model=versions[0].model,
        pool=pool,
    )
    owner = actor_for(org["owner"])
    with pytest.raises(Conflict, match=f"fine-tune #{job.pk} is using it"):
        services.archive_version(actor=owner, version=versions[0])
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    adapter = ModelVersion.objects.create(
        model=versions[0].model, number=3, kind=VersionKind.ADAPTER, source=Source.FINE_TUNE, base_version=versions[0],
        artifact=versions[0].artifact, status=VersionStatus.ARCHIVED,
    )  # fmt: skip
    merge = MergeJob.objects.create(adapter=adapter, owner_team=team, status=JobStatus.RUNNING)
    with pytest.raises(Conflict, match=f"merge #{merge.pk} is using it"):
        services.archive_version(actor=owner, version=versions[0])
    MergeJob.objects.filter(pk=merge.pk).update(status=JobStatus.SUCCEEDED)
    assert services.archive_version(actor=owner, version=versions[0]).status == VersionStatus.ARCHIVED
