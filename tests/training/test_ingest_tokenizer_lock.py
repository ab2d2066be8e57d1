"""An upload (its tokenizer), a fine-tune start (its base) and a deployment change (its version) lock a model
version so that it is not archived meanwhile, while another dataset's ingest records a version measured with it:
both commit. Found by review: a full row lock blocked the ingest's foreign-key check at commit while the locker
waited for the audit chain the ingest held: PostgreSQL aborted one of them (a 500, or an ingest "errored" and its
upload deleted)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from tests.training.conftest import jsonl, tickets
from tests.training.test_ingest_tokenizer_in_use import tokenizer as tokenizer  # noqa: F401 - the fixture
from training import ingest, services
from training.choices import DatasetKind, JobStatus
from training.models import DatasetIngest

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(work, errors: dict, name: str) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def pending(engineer, team, tokenizer) -> DatasetIngest:
    """An upload measured with ``tokenizer``, not yet ingested."""
    one = services.create_dataset(actor=engineer, owner_team=team, name="one", kind=DatasetKind.CHAT)
    return services.upload_version(actor=engineer, dataset=one, chunks=[jsonl(*tickets(20))],
                                   filename="a.jsonl", base_version=tokenizer, enqueue=False)  # fmt: skip


def race_with_ingest(monkeypatch, pending: DatasetIngest, holder, hook: str, work) -> None:
    """Runs ``pending``'s ingest and ``work`` at once: ``work`` pauses just after ``holder.hook`` (the version locked,
    its audit row to come) until the ingest is within its record, holding the audit chain, and the ingest waits
    for that pause; both must commit."""
    chain_held, version_locked = threading.Event(), threading.Event()
    succeed, original = ingest._succeed, getattr(holder, hook)

    def succeeding(*args, **kwargs):  # within the ingest's record: its audit row (the chain) comes next
        chain_held.set()
        version_locked.wait(10)
        return succeed(*args, **kwargs)

    def holding(*args, **kwargs):
        result = original(*args, **kwargs)
        version_locked.set()
        chain_held.wait(10)
        return result

    monkeypatch.setattr(ingest, "_succeed", succeeding)
    monkeypatch.setattr(holder, hook, holding)
    errors: dict = {}
    threads = [in_thread(lambda: ingest.run(pending.pk), errors, "ingest"), in_thread(work, errors, "locker")]
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert DatasetIngest.objects.get(pk=pending.pk).status == JobStatus.SUCCEEDED


def test_an_upload_and_another_datasets_ingest_measured_with_one_tokenizer_both_commit(
    engineer, team, tokenizer, pending, monkeypatch
):
    two = services.create_dataset(actor=engineer, owner_team=team, name="two", kind=DatasetKind.CHAT)
    race_with_ingest(monkeypatch, pending, services, "_still_ready", lambda: services.upload_version(
        actor=engineer, dataset=two, chunks=[jsonl(*tickets(7))], filename="b.jsonl", base_version=tokenizer,
        enqueue=False,
    ))  # fmt: skip
    assert DatasetIngest.objects.filter(dataset=two).exists()


def test_a_fine_tune_started_on_a_base_an_ingest_measures_with_and_that_ingest_both_commit(
    engineer, tokenizer, pending, dataset_version, cpu_pool, enqueued, monkeypatch
):
    """``start_job`` locks its base as the upload locks its tokenizer, with the same cycle when the ingest
    records at that moment (found with the one above). It pauses after ``dataset_purge.ready``, which runs
    with the base locked and before its job and audit row."""
    from training import dataset_purge, finetune

    race_with_ingest(monkeypatch, pending, dataset_purge, "ready", lambda: finetune.start_job(
        actor=engineer, base_version=tokenizer, dataset_version=dataset_version, pool=cpu_pool,
        hyperparameters={"max_length": 64},  # the tiny tokenizer's context
    ))  # fmt: skip


def test_a_deployment_made_of_a_version_an_ingest_measures_with_and_that_ingest_both_commit(
    org, team, tokenizer, pending, cpu_pool, monkeypatch
):
    """Serving locks a version it deploys as ``start_job`` locks its base (``_lock_version``), with the same cycle
    when the ingest records at that moment."""
    from serving import services as serving_services
    from serving.services import deployments
    from tests.conftest import actor_for

    admin = actor_for(org["admin"])
    race_with_ingest(monkeypatch, pending, deployments, "_lock_version", lambda: serving_services.create_deployment(
        actor=admin, name="words", team=team, version=tokenizer, pool=cpu_pool, replicas=0,
        args={"max_model_len": 64},
    ))  # fmt: skip
