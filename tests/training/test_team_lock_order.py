"""Whatever takes a team's row lock (the bounds counted under it: uploads waiting, merges; who calls whom in its
endpoints) takes it before any model version's row lock. Found by review: a restart onto a version (the team's
lock, then the version's) deadlocked with a dataset upload measured with that version or an adapter uploaded
on it (the version's, then the team's), and PostgreSQL aborted one of them (a 500); a merge of an adapter took
them in that order too."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portfolio.registry import merging
from portfolio.registry import services as registry
from portfolio.registry.choices import Source
from serving import services as serving_services
from serving.services import composite
from tests.conftest import actor_for
from tests.training.conftest import jsonl, tickets
from tests.training.test_ingest_tokenizer_in_use import tokenizer as tokenizer  # noqa: F401 - the fixture
from tests.training.test_ingest_tokenizer_lock import in_thread
from training import services
from training.choices import DatasetKind

pytestmark = pytest.mark.django_db


def rows_locked(work, start: list[int] | None = None) -> list[str]:
    """Which rows ``work`` locks, in order: "team" or "version"; from ``start[0]`` on (a count of
    ``connection.queries`` taken meanwhile) if given."""
    with CaptureQueriesContext(connection) as queries:
        before = len(connection.queries)
        work()
    locked = []
    for query in queries[start[0] - before if start else 0 :]:
        sql = query["sql"]
        if " FOR " in sql and "UPDATE" in sql:
            if 'FROM "accounts_team"' in sql:
                locked.append("team")
            elif 'FROM "registry_modelversion"' in sql:
                locked.append("version")
    return locked


def team_first(locked: list[str]) -> bool:
    return "team" in locked and "version" in locked and locked.index("team") < locked.index("version")


@pytest.fixture
def dataset(engineer, team):
    return services.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)


def test_a_dataset_upload_measured_with_a_version_locks_the_team_first(
    engineer, dataset, tokenizer, monkeypatch
):
    # Read from the transaction that records the upload (an early count, in a transaction of its own, comes
    # before the file is saved).
    save, start = services._save_upload, [0]

    def saving(chunks):
        start[0] = len(connection.queries)
        return save(chunks)

    monkeypatch.setattr(services, "_save_upload", saving)
    locked = rows_locked(lambda: services.upload_version(
        actor=engineer, dataset=dataset, chunks=[jsonl(*tickets(7))], filename="a.jsonl", base_version=tokenizer
    ), start)  # fmt: skip
    assert team_first(locked), locked


def test_an_adapter_uploaded_on_a_base_locks_the_team_first(engineer, team, tokenizer):
    model = registry.create_model(actor=engineer, name="router-adapters", owner_team=team)
    upload = Path(settings.DATA_DIR) / "uploads" / "adapter.zip"
    locked = rows_locked(lambda: registry.start_import(
        actor=engineer, model=model, source=Source.UPLOAD, ref="adapter.zip", base_version=tokenizer,
        upload_path=upload,
    ))  # fmt: skip
    assert team_first(locked), locked


def test_a_merge_of_an_adapter_locks_the_team_first(versions, engineer):
    _, adapter = versions
    assert team_first(rows_locked(lambda: merging.request_merge(actor=engineer, version=adapter)))


def test_a_restart_given_a_version_locks_the_team_first(org, team, tokenizer, cpu_pool):
    admin = actor_for(org["admin"])
    deployment = serving_services.create_deployment(
        actor=admin, name="words", team=team, version=tokenizer, pool=cpu_pool, replicas=0,
        args={"max_model_len": 64},
    )  # fmt: skip
    locked = rows_locked(
        lambda: serving_services.restart(actor=admin, deployment=deployment, version=tokenizer)
    )
    assert team_first(locked), locked


@pytest.mark.django_db(transaction=True)
def test_a_dataset_upload_and_a_restart_onto_its_tokenizers_version_both_commit(
    org, engineer, team, dataset, tokenizer, cpu_pool, monkeypatch
):
    """The review's race: the restart starts once the upload holds the version; with one order it waits for
    the upload's team lock instead of the two waiting for each other."""
    admin = actor_for(org["admin"])
    deployment = serving_services.create_deployment(
        actor=admin, name="words", team=team, version=tokenizer, pool=cpu_pool, replicas=0,
        args={"max_model_len": 64},
    )  # fmt: skip
    upload_locked, restart_locked = threading.Event(), threading.Event()
    still_ready, calls = services._still_ready, composite.lock_calls_of

    def ready_then_wait(version) -> None:  # the version locked, the upload's audit row and commit to come
        still_ready(version)
        upload_locked.set()
        restart_locked.wait(3)  # the restart takes its first lock meanwhile, if it can

    def calls_then_say(team_id: int) -> None:
        calls(team_id)
        restart_locked.set()

    monkeypatch.setattr(services, "_still_ready", ready_then_wait)
    monkeypatch.setattr(composite, "lock_calls_of", calls_then_say)
    errors: dict = {}
    restarted = threading.Event()

    def restarting() -> None:
        assert upload_locked.wait(30), "the upload never held the version"
        # Given a version, a restart takes its locks even onto the version it runs.
        serving_services.restart(actor=admin, deployment=deployment, version=tokenizer)
        restarted.set()

    upload = in_thread(lambda: services.upload_version(
        actor=engineer, dataset=dataset, chunks=[jsonl(*tickets(7))], filename="b.jsonl", base_version=tokenizer
    ), errors, "upload")  # fmt: skip
    restart = in_thread(restarting, errors, "restart")
    upload.join(60)
    restart.join(60)
    assert not errors, errors
    assert not upload.is_alive() and not restart.is_alive() and restarted.is_set()
    assert dataset.ingests.count() == 1
