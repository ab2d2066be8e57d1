"""Production's eval guard with the checks training registers: a candidate with no score on any eval set of the
model's team, where the holder has one, is refused like one that scores lower (found by review: a version never
evaluated, a chat-template copy or a fresh import, was promoted over an evaluated production version by an
engineer, and a lower-scoring version then followed it with no owner's word)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Alias, Artifact, ModelVersion
from tests.conftest import actor_for
from training.models import Dataset, DatasetVersion, EvalRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(org, team):
    """Model ``guarded`` with ready v1 (the production holder, scored 0.900 on eval-set v1), v2 and v3."""
    model = services.create_model(actor=actor_for(org["engineer"]), name="guarded", owner_team=team)
    artifact = Artifact.objects.create(
        id="e" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )
    v1, v2, v3 = (
        ModelVersion.objects.create(
            model=model, number=n, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
        )
        for n in (1, 2, 3)
    )
    evals = eval_set(team, "eval-set", artifact)
    score(v1, evals, 0.9)
    services.promote(actor=actor_for(org["engineer"]), version=v1, alias="production")
    return {"v1": v1, "v2": v2, "v3": v3, "evals": evals, "artifact": artifact}


def eval_set(team, name: str, artifact: Artifact) -> DatasetVersion:
    dataset = Dataset.objects.create(name=name, owner_team=team)
    return DatasetVersion.objects.create(
        dataset=dataset, number=1, shape="chat", artifact=artifact, content_sha256="0" * 64,
        row_count=10, train_count=8, eval_count=2, eval_fraction=0.2, split_seed=1, size_bytes=1,
    )  # fmt: skip


def score(version, dataset_version, value, *, status="succeeded", metric="accuracy") -> EvalRun:
    return EvalRun.objects.create(
        version=version,
        dataset_version=dataset_version,
        status=status,
        metrics={metric: value} if value is not None else {},
        finished_at=timezone.now(),
    )


def holder(model_name: str = "guarded") -> int:
    return Alias.objects.get(model__name=model_name, name="production").version.number


def test_an_engineer_cannot_promote_a_version_never_evaluated_over_an_evaluated_production(org, world):
    with pytest.raises(Conflict) as refused:
        services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert refused.value.message == (
        "guarded:v2 is not evaluated on eval-set v1, where guarded:v1 scores 0.900: evaluate it first, "
        "or an owner promotes it with a reason."
    )
    assert refused.value.code == "not_evaluated"
    assert holder() == 1


def test_the_bypass_through_an_unevaluated_version_is_closed(org, world):
    """The review's path: v2 (never evaluated) over v1, then v3 (lower than v1) over v2, both by an engineer."""
    engineer = actor_for(org["engineer"])
    score(world["v3"], world["evals"], 0.5)
    with pytest.raises(Conflict, match="is not evaluated on eval-set v1"):
        services.promote(actor=engineer, version=world["v2"], alias="production")
    with pytest.raises(Conflict, match=r"scores below the current production guarded:v1 \(0.500 vs 0.900"):
        services.promote(actor=engineer, version=world["v3"], alias="production")
    assert holder() == 1


def test_an_owner_promotes_an_unevaluated_version_with_a_reason_an_engineer_may_not_give(org, world):
    with pytest.raises(Forbidden):
        services.promote(
            actor=actor_for(org["engineer"]),
            version=world["v2"],
            alias="production",
            force_reason="same weights",
        )
    services.promote(
        actor=actor_for(org["owner"]),
        version=world["v2"],
        alias="production",
        force_reason="v1 + chat template",
    )
    assert holder() == 2
    event = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert event is not None and (event.after or {}).get("forced") == "v1 + chat template"


@pytest.mark.parametrize(
    ("status", "value", "metric"),
    [("failed", 0.95, "accuracy"), ("running", None, "accuracy"), ("succeeded", None, "accuracy"),
     ("succeeded", 0.95, "loss")],
    ids=["failed-run", "running-run", "no-metrics", "no-headline"],
)  # fmt: skip
def test_a_run_that_gave_no_score_is_no_evaluation(org, world, status, value, metric):
    score(world["v2"], world["evals"], value, status=status, metric=metric)
    with pytest.raises(Conflict, match="is not evaluated on eval-set v1"):
        services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")


def test_a_candidate_scored_as_well_on_every_set_of_the_holder_is_promoted(org, team, world):
    score(world["v2"], world["evals"], 0.9)
    score(world["v2"], eval_set(team, "only-the-candidate", world["artifact"]), 0.1)  # nothing to compare
    services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert holder() == 2


def test_a_holder_never_evaluated_blocks_nothing(org, team, world):
    engineer = actor_for(org["engineer"])
    services.promote(actor=actor_for(org["owner"]), version=world["v2"], alias="production", force_reason="x")
    services.promote(actor=engineer, version=world["v3"], alias="production")  # v2 has no score
    assert holder() == 3
    # Nor a holder whose only run gave no score.
    score(world["v3"], world["evals"], None)
    services.promote(actor=engineer, version=world["v2"], alias="production")
    assert holder() == 2


def test_another_teams_scores_of_the_holder_neither_block_nor_are_named(org, team, other_team, world):
    theirs = eval_set(other_team, "contracts-secret", world["artifact"])
    score(world["v1"], theirs, 0.99)
    with pytest.raises(Conflict) as refused:
        services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert "contracts" not in refused.value.message
    score(world["v2"], world["evals"], 0.95)
    services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert holder() == 2


def test_a_retrain_scored_on_another_set_only_is_promoted_as_before(org, team, world):
    """A fine-tune job scores its output on its own dataset version only: a retrain on the dataset's next
    version has no score on the holder's set, and that is no bypass (it was evaluated)."""
    newer = eval_set(team, "eval-set-next", world["artifact"])
    score(world["v2"], newer, 0.93)
    services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert holder() == 2


def test_a_lower_score_is_said_with_the_holders_sets_the_candidate_was_scored_on(org, team, world):
    other_set = eval_set(team, "tone", world["artifact"])
    score(world["v1"], other_set, 0.8)
    score(world["v2"], world["evals"], 0.5)
    with pytest.raises(Conflict) as refused:
        services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert refused.value.message == (
        "guarded:v2 scores below the current production guarded:v1 (0.500 vs 0.900 on eval-set v1). "
        "An owner may promote it anyway with a reason."
    )
    assert refused.value.code == "score_regression"


def test_a_version_never_scored_is_told_every_set_the_holder_was_scored_on(org, team, world):
    score(world["v1"], eval_set(team, "tone", world["artifact"]), 0.8)
    with pytest.raises(Conflict) as refused:
        services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="production")
    assert refused.value.message == (
        "guarded:v2 is not evaluated on eval-set v1, where guarded:v1 scores 0.900; not evaluated on tone v1, "
        "where guarded:v1 scores 0.800: evaluate it first, or an owner promotes it with a reason."
    )


def test_an_unevaluated_version_goes_to_an_alias_that_is_not_guarded(org, world):
    services.promote(actor=actor_for(org["engineer"]), version=world["v2"], alias="staging")
    assert Alias.objects.get(name="staging").version == world["v2"]


def test_the_api_answers_409_with_the_reason(client, org, world):
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/models/guarded/versions/2/promote", {"alias": "production"}, content_type="application/json"
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_evaluated" and "is not evaluated on eval-set v1" in error["message"]


def test_the_promote_form_shows_the_refusal_and_asks_an_owner_for_a_reason(signed_in, org, world):
    url = reverse("version-promote", args=["guarded", 2])
    response = signed_in(org["engineer"]).post(url, {"alias": "production", "confirm": "on"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "is not evaluated on eval-set v1, where guarded:v1 scores 0.900" in page
    assert 'name="force_reason"' in page and "Reason to override the eval scores (owners only)" in page
    assert holder() == 1
    response = signed_in(org["owner"]).post(
        url, {"alias": "production", "confirm": "on", "force_reason": "v1 with a chat template"}
    )
    assert response.status_code == 302 and holder() == 2
