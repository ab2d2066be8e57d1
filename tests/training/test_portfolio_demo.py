"""The demo of `make run` for the portfolio: seed_demo_dataset registers the task "Ticket routing" with the
demo set's held-out rows as its eval set; finetune_demo, once its adapter is loaded, names the general demo
endpoint the task's production endpoint and queues an eval run of it and of the tuned endpoint (once)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.errors import Invalid
from portfolio.registry.demo_model import MODEL_NAME
from serving.choices import ReplicaState
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute, Replica
from training import finetune
from training.evals import runs
from training.evals.models import EndpointEvalRun, Task
from training.management.commands.finetune_demo import Command as FinetuneDemo
from training.models import Dataset

pytestmark = pytest.mark.django_db


def test_the_demo_dataset_comes_with_its_task_and_eval_set_once(demo_team):
    call_command("seed_demo_dataset")
    call_command("seed_demo_dataset")
    task = Task.objects.get(owner_team=demo_team, slug="ticket-routing")
    (eval_set,) = task.eval_sets.all()
    assert task.name == "Ticket routing" and task.kind == "classification"
    assert eval_set.dataset_version.dataset == Dataset.objects.get(name="ticket-routing")
    assert eval_set.row_count == 8  # the held-out rows, which the demo fine-tune never sees


@pytest.fixture
def served(demo_team, base, cpu_pool):
    """The demo's endpoints: smollm2 (the base) and ticket-router (its adapter, loaded on a ready replica)."""
    call_command("seed_demo_dataset")
    deployment = Deployment.objects.create(
        name="smollm2-demo", owner_team=demo_team, version=base, pool=cpu_pool
    )
    adapter = DeploymentAdapter.objects.create(deployment=deployment, version=base, name="ticket-router-lora")
    general = Endpoint.objects.create(name="smollm2", owner_team=demo_team)
    EndpointRoute.objects.create(endpoint=general, deployment=deployment, weight=100)
    tuned = Endpoint.objects.create(name="ticket-router", owner_team=demo_team)
    EndpointRoute.objects.create(endpoint=tuned, deployment=deployment, adapter=adapter, weight=100)
    Replica.objects.create(
        deployment=deployment,
        generation=1,
        state=ReplicaState.READY,
        loaded_adapters=[adapter.name],
        adapter_versions={adapter.name: adapter.version_id},
    )
    return tuned, adapter


def test_the_demo_fine_tune_queues_the_leaderboard_once(
    served, cpu_pool, monkeypatch, system_actor, django_capture_on_commit_callbacks
):
    queued: list[int] = []
    monkeypatch.setattr(runs, "enqueue_run", queued.append)
    tuned, adapter = served
    with django_capture_on_commit_callbacks(execute=True):
        FinetuneDemo().evaluate(system_actor, tuned, adapter, cpu_pool)
        FinetuneDemo().evaluate(system_actor, tuned, adapter, cpu_pool)
    task = Task.objects.get(slug="ticket-routing")
    assert task.production_endpoint.name == "smollm2"
    assert sorted(EndpointEvalRun.objects.values_list("endpoint_name", flat=True)) == [
        "smollm2",
        "ticket-router",
    ]
    assert len(queued) == 2


def test_the_demo_fine_tune_does_not_score_an_adapter_still_held_at_another_version(
    served, cpu_pool, monkeypatch, system_actor, django_capture_on_commit_callbacks
):
    """Waiting on the name alone, it took a replica holding another version under the name (its reload under
    way) for one serving the adapter, and scored the engine's old weights as the new adapter's."""
    queued: list[int] = []
    monkeypatch.setattr(runs, "enqueue_run", queued.append)
    monkeypatch.setattr("training.management.commands.finetune_demo.ADAPTER_LOAD_TIMEOUT", 0)
    tuned, adapter = served
    Replica.objects.update(adapter_versions={adapter.name: adapter.version_id + 1000})
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        command = FinetuneDemo(stdout=out)
        command.evaluate(system_actor, tuned, adapter, cpu_pool)
    assert "was not loaded within" in out.getvalue()
    assert (queued, EndpointEvalRun.objects.count()) == ([], 0)


@pytest.fixture
def demo_base(demo_team, base, cpu_pool, settings):
    """What finetune_demo finds after `make run`'s earlier steps: the demo base model and this machine's pool."""
    base.model.name = MODEL_NAME
    base.model.save(update_fields=["name"])
    settings.NODE_POOL = cpu_pool.name
    return base


def test_the_demo_fine_tune_refuses_a_dataset_without_a_version_in_a_sentence(demo_base, demo_team):
    Dataset.objects.create(name="ticket-routing", owner_team=demo_team)
    with pytest.raises(CommandError, match="has no version to fine-tune on; run seed_demo_dataset"):
        call_command("finetune_demo", stdout=StringIO())


def test_the_demo_fine_tune_says_why_a_job_could_not_start(demo_base, dataset_version, monkeypatch):
    dataset_version.dataset.name = "ticket-routing"
    dataset_version.dataset.save(update_fields=["name"])

    def start_job(**kwargs):
        raise Invalid("pool: cpu has no node with the memory smol-base needs.")

    monkeypatch.setattr(finetune, "start_job", start_job)
    with pytest.raises(CommandError, match="could not start: pool: cpu has no node"):
        call_command("finetune_demo", stdout=StringIO())
