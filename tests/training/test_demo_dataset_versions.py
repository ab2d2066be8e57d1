"""A person may upload a new version of the demo's ticket-routing set with no held-out rows (eval_fraction=0):
`make run` still starts (seed_demo_dataset is one of its start-up steps), and the demo task and fine-tune keep
to the newest version that has held-out rows."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.training.conftest import jsonl, tickets, upload
from training import services
from training.choices import DatasetKind
from training.evals.models import Task
from training.models import Dataset

pytestmark = pytest.mark.django_db


def _all_training_version(engineer, dataset):
    version, _ = upload(engineer, dataset, jsonl(*tickets(12)), eval_fraction=0)
    assert version.number == 2 and version.eval_count == 0
    return version


def test_a_newer_version_without_held_out_rows_does_not_stop_the_demo_seed(demo_team, engineer):
    call_command("seed_demo_dataset", stdout=StringIO())
    dataset = Dataset.objects.get(owner_team=demo_team, name="ticket-routing")
    _all_training_version(engineer, dataset)

    call_command("seed_demo_dataset", stdout=StringIO())  # raised Invalid: "v2 has no held-out rows"

    (eval_set,) = Task.objects.get(owner_team=demo_team, slug="ticket-routing").eval_sets.all()
    assert eval_set.dataset_version.number == 1 and eval_set.row_count == 8


def test_the_demo_seed_says_why_there_is_no_task_rather_than_failing(demo_team, engineer, monkeypatch):
    from portfolio.errors import Invalid
    from training.evals import catalogue

    def add_eval_set(**kwargs):
        raise Invalid("dataset_version: no rows.")

    monkeypatch.setattr(catalogue, "add_eval_set", add_eval_set)
    out = StringIO()
    call_command("seed_demo_dataset", stdout=out)
    assert "No demo task: dataset_version: no rows." in out.getvalue()


def _make_demo_base(base, cpu_pool, settings) -> None:
    """What finetune_demo finds after `make run`'s earlier steps: the demo base and this machine's pool."""
    from portfolio.registry.demo_model import MODEL_NAME

    base.model.name = MODEL_NAME
    base.model.save(update_fields=["name"])
    settings.NODE_POOL = cpu_pool.name


def test_the_demo_fine_tune_trains_on_the_version_whose_held_out_rows_the_task_scores(
    demo_team, engineer, base, cpu_pool, settings, monkeypatch
):
    from portfolio.errors import Invalid
    from training import finetune

    call_command("seed_demo_dataset", stdout=StringIO())  # before: the stand-in base has no tokenizer
    _make_demo_base(base, cpu_pool, settings)
    _all_training_version(engineer, Dataset.objects.get(owner_team=demo_team, name="ticket-routing"))
    trained_on = []

    def start_job(*, dataset_version, **kwargs):
        trained_on.append(dataset_version.number)
        raise Invalid("stopped here by the test")

    monkeypatch.setattr(finetune, "start_job", start_job)
    with pytest.raises(CommandError, match="stopped here by the test"):
        call_command("finetune_demo", stdout=StringIO())
    assert trained_on == [1]  # v2 holds no rows out: trained on, the task's rows would be seen


def test_the_demo_fine_tune_refuses_a_set_with_no_held_out_rows_in_a_sentence(
    demo_team, engineer, base, cpu_pool, settings
):
    _make_demo_base(base, cpu_pool, settings)
    dataset = services.create_dataset(
        actor=engineer, owner_team=demo_team, name="ticket-routing", kind=DatasetKind.CHAT
    )
    upload(engineer, dataset, jsonl(*tickets(12)), eval_fraction=0)
    with pytest.raises(CommandError, match="no version with held-out rows to fine-tune on"):
        call_command("finetune_demo", "--timeout", "1", stdout=StringIO())  # not waiting for a job
