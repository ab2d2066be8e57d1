"""An archived dataset version (its files about to be deleted, or gone) is not taken up again: a fine-tune,
a distillation, an eval set or an eval run started on one read files gone by the time it ran and failed then.
An upload of the same rows makes an archived version ready again; of a purged one's, it is refused, saying
why (the ingest named the purged version as its outcome, a version without rows)."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Invalid
from serving.models import Endpoint
from tests.training.conftest import jsonl, tickets, upload
from training import dataset_purge, finetune, services
from training.choices import DatasetVersionStatus
from training.evals import canary_judging, catalogue, runs
from training.evals.models import Task
from training.models import DatasetVersion

pytestmark = pytest.mark.django_db
ROWS = jsonl(*tickets(20))


@pytest.fixture
def version(engineer, chat_set) -> DatasetVersion:
    made, _ = upload(engineer, chat_set, ROWS)
    return made


@pytest.fixture
def archived(engineer, version) -> DatasetVersion:
    return dataset_purge.archive_version(actor=engineer, version=version)


def test_a_fine_tune_on_an_archived_version_is_refused(engineer, archived, base, cpu_pool):
    with pytest.raises(Invalid, match="is archived; choose a ready version"):
        finetune.start_job(actor=engineer, base_version=base, dataset_version=archived, pool=cpu_pool)


def test_an_eval_set_on_an_archived_version_is_refused(engineer, team, archived):
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    with pytest.raises(Invalid, match="is archived"):
        catalogue.add_eval_set(actor=engineer, task=task, dataset_version=archived, source="all")


def test_an_eval_run_of_an_eval_set_archived_since_is_refused(engineer, team, version):
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    dataset_purge.archive_version(actor=engineer, version=version)
    endpoint = Endpoint.objects.create(owner_team=team, name="ep")
    with pytest.raises(Invalid, match="eval_set: .* is archived"):
        runs.start_run(actor=engineer, task=task, eval_set=eval_set, endpoint=endpoint, enqueue=False)


def test_the_same_rows_uploaded_again_make_an_archived_version_ready(engineer, chat_set, archived):
    again, created = upload(engineer, chat_set, ROWS)
    assert (again.pk, created) == (archived.pk, False)
    assert DatasetVersion.objects.get(pk=archived.pk).status == DatasetVersionStatus.READY
    event = AuditEvent.objects.get(action="dataset_version.restore", object_id=str(archived.pk))
    assert (event.before["status"], event.after["status"]) == ("archived", "ready")


def test_the_same_rows_split_as_before_give_a_purged_version_its_files_back(
    engineer, chat_set, archived, django_capture_on_commit_callbacks
):
    """A distillation asking its teacher again (temperature 0, the same prompts) lands on its purged answers
    version after every billed call: refusing it failed the job each time (found by review)."""
    with django_capture_on_commit_callbacks(execute=True):
        dataset_purge.purge_version(actor=engineer, version=archived)
    again, created = upload(engineer, chat_set, ROWS)
    restored = DatasetVersion.objects.get(pk=archived.pk)
    assert (again.pk, created) == (archived.pk, False)
    assert restored.status == DatasetVersionStatus.READY and restored.artifact_id is not None
    assert services.split_rows(restored, "train"), "its rows can be read again"
    event = AuditEvent.objects.get(action="dataset_version.restore", object_id=str(archived.pk))
    assert event.before["artifact"] is None and event.after["artifact"] == restored.artifact_id
    assert chat_set.versions.count() == 1


def test_the_same_rows_split_otherwise_than_a_purged_version_are_refused_saying_how(
    engineer, chat_set, archived
):
    dataset_purge.purge_version(actor=engineer, version=archived)
    with pytest.raises(Invalid, match="whose stored files were deleted. Upload them with eval fraction"):
        upload(engineer, chat_set, ROWS, eval_fraction=0.3)
    assert chat_set.versions.count() == 1
    assert DatasetVersion.objects.get(pk=archived.pk).artifact_id is None


def test_a_rollout_judge_samples_only_an_eval_set_whose_rows_are_stored(engineer, team, chat_set, version):
    """The newest eval set's version purged, every sample failed and a judged rollout rolled back however
    healthy its canary (found by review): an older eval set still stored is sampled, and with none, a judged
    rollout is refused at its start."""
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    kept = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    newer, _ = upload(engineer, chat_set, jsonl(*tickets(24)))
    catalogue.add_eval_set(actor=engineer, task=task, dataset_version=newer, source="all")
    endpoint = Endpoint.objects.create(owner_team=team, name="support")
    Task.objects.filter(pk=task.pk).update(production_endpoint=endpoint)
    # An eval set's files are no longer deleted (``dataset_purge._evidence``), but versions purged before
    # that are still there: purged here as purge_version did.
    DatasetVersion.objects.filter(pk=newer.pk).update(status="archived", artifact=None)
    assert canary_judging.eval_set_of(endpoint) == kept
    DatasetVersion.objects.filter(pk=version.pk).update(status="archived", artifact=None)
    assert "an eval set to sample" in canary_judging.check(endpoint)


def test_a_tasks_eval_set_can_be_archived_but_its_files_are_kept(engineer, team, version):
    """Its leaderboard's scores were measured on its rows, and a task cannot drop an eval set: deleting them
    left scores nobody could check again, and a judged rollout with nothing to sample."""
    task = catalogue.create_task(actor=engineer, owner_team=team, name="Routing", kind="classification")
    catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
    dataset_purge.archive_version(actor=engineer, version=version)
    with pytest.raises(Conflict, match="it is an eval set of the task Routing, whose scores rest on it"):
        dataset_purge.purge_version(actor=engineer, version=version)
    assert DatasetVersion.objects.get(pk=version.pk).artifact_id == version.artifact_id


def test_a_task_locks_its_eval_sets_versions_in_one_order(client, org, team, chat_set, version, engineer):
    """Two requests naming the same versions in opposite orders locked them in their own orders: a deadlock,
    answered 500 (found by review)."""
    second, _ = upload(engineer, chat_set, jsonl(*tickets(24)))
    client.force_login(org["engineer"])
    body = {
        "owner_team_id": team.pk,
        "name": "Routing",
        "kind": "classification",
        "eval_sets": [{"dataset_version_id": second.pk}, {"dataset_version_id": version.pk}],
    }
    with CaptureQueriesContext(connection) as queries:
        created = client.post("/api/v1/tasks", body, content_type="application/json")
    assert created.status_code == 201, created.content
    locked = [
        int(re.search(r'"training_datasetversion"\."id" = (\d+)', q["sql"]).group(1))
        for q in queries.captured_queries
        if "FOR NO KEY UPDATE" in q["sql"] and "training_datasetversion" in q["sql"].split("FROM")[1][:40]
    ]
    assert locked[:2] == sorted([second.pk, version.pk]), locked
