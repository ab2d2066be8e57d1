"""The permission decision of each training page, for tests/test_route_permissions.py, with the objects those
pages act on (``build_world``) and where their URL arguments come from (``UI_KWARGS``).

The world values the rules use: ``slug`` (the team), ``dataset`` (its name), ``dataset_id``, ``number`` (1,
the dataset's first version), ``filename`` (a file of that version) and ``ingest_id`` (the upload that made it); for the task
pages ``task_id`` (a classification task of the team), ``eval_set_id`` (all rows of that version), ``endpoint_id``
(``smol-ep``, also the task's production endpoint) and ``eval_run_id`` (a queued run of it); for the fine-tuning pages, from
tests/test_route_permissions.py's ``world``: ``job_id`` (a queued job of the team), ``version_id`` (a ready
base version), ``dataset_version_id``, the pool ``local-cpu`` and the team's endpoint ``smol-ep`` (the
distillation's teacher)."""

from __future__ import annotations

import io
import json

from serving.models import Endpoint
from tests.permissions import Rule, ui
from training import ingest, services
from training.choices import DatasetKind
from training.evals import catalogue, portfolio, runs

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Ticket {i}: I was charged twice"},
            {"role": "assistant", "content": "billing"},
        ]
    }
    for i in range(12)
]
CONTENT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()

UI_ROUTES: dict[str, Rule] = {
    "training-list": ui("signed_in"),
    "dataset-create": ui("team", "training.run", "POST", name="new-set", owner_team="{team_id}", kind="chat"),
    "dataset-detail": ui("team", "model.view"),
    "dataset-upload": ui(
        "team", "training.run", "POST", file="<dataset.jsonl>", eval_fraction="0.1", seed="42"
    ),
    "dataset-version": ui("team", "model.view"),
    # The world's version is in use and not archived: a permitted caller is sent back with the refusal.
    "dataset-version-archive": ui("team", "training.run", "POST"),
    "dataset-version-purge": ui("team", "training.run", "POST"),
    "dataset-ingest": ui("team", "model.view"),
    "job-list": ui("signed_in"),
    # Rule, not ui(): the form's "method" field would clash with ui()'s own argument.
    "job-create": Rule(
        "team",
        "training.run",
        "POST",
        {
            "base_version": "{version_id}",
            "dataset_version": "{dataset_version_id}",
            "pool": "local-cpu",
            "method": "lora",
        },
    ),
    # The start form's preview of the layers LoRA adapts: the world's base is the team's, so an outsider
    # (who may train in their own team) gets 404, a member who may not train 403.
    "job-targets": ui(
        "team", "training.run", base_version="{version_id}", dataset_version="{dataset_version_id}"
    ),
    "job-detail": ui("team", "model.view"),
    # The world's job is queued: cancelling it ends it at once.
    "job-cancel": ui("team", "training.run", "POST"),
    # The teacher is the world's endpoint of the team; a developer may call it but not train: 403.
    "distillation-create": ui(
        "team",
        "training.run",
        "POST",
        teacher="smol-ep",
        prompts="{dataset_version_id}",
        student="{version_id}",
        pool="local-cpu",
    ),
    "eval-list": ui("signed_in"),
    # Tasks and eval runs of endpoints: the world's task has one eval set and a queued run of smol-ep.
    "task-list": ui("signed_in"),
    "task-create": ui(
        "team", "training.run", "POST", name="Routing", owner_team="{team_id}", kind="classification"
    ),
    "task-detail": ui("team", "model.view"),
    "task-eval-set-add": ui(
        "team", "training.run", "POST", dataset_version="{dataset_version_id}", source="all"
    ),
    # The world's eval set has a queued run: a permitted caller is sent back with the refusal.
    "task-eval-set-delete": ui("team", "training.run", "POST"),
    "task-run-start": ui(
        "team",
        "training.run",
        "POST",
        endpoint="{endpoint_id}",
        eval_set="{eval_set_id}",
        row_limit="5",
        concurrency="2",
        max_tokens="8",
    ),
    # Side by side: the world's one run is queued, so a member is told why there is nothing to compare (400).
    "task-compare": ui("team", "model.view", run="{eval_run_id}"),
    "eval-run-detail": ui("team", "model.view"),
    # The world's run is queued: cancelling it ends it at once.
    "eval-run-cancel": ui("team", "training.run", "POST"),
    # The portfolio: the world's task is served by smol-ep in production. A canary of smol-ep itself is
    # refused as invalid (it has no finished run), after the permission decision.
    "portfolio": ui("signed_in"),
    "portfolio-production": ui("team", "training.run", "POST", endpoint="{endpoint_id}"),
    "portfolio-canary": ui("team", "deployment.manage", "POST", candidate="smol-ep"),
}

# URL keyword argument -> the world value it takes, per route (routes not named here take none).
UI_KWARGS: dict[str, dict[str, str]] = {
    "dataset-detail": {"team": "slug", "name": "dataset"},
    "dataset-upload": {"team": "slug", "name": "dataset"},
    "dataset-version": {"team": "slug", "name": "dataset", "number": "number"},
    "dataset-version-archive": {"team": "slug", "name": "dataset", "number": "number"},
    "dataset-version-purge": {"team": "slug", "name": "dataset", "number": "number"},
    "dataset-ingest": {"team": "slug", "name": "dataset", "ingest_id": "ingest_id"},
    "job-detail": {"job_id": "job_id"},
    "job-cancel": {"job_id": "job_id"},
    "task-detail": {"task_id": "task_id"},
    "task-eval-set-add": {"task_id": "task_id"},
    "task-eval-set-delete": {"task_id": "task_id", "eval_set_id": "eval_set_id"},
    "task-run-start": {"task_id": "task_id"},
    "task-compare": {"task_id": "task_id"},
    "eval-run-detail": {"run_id": "eval_run_id"},
    "eval-run-cancel": {"run_id": "eval_run_id"},
    "portfolio-production": {"task_id": "task_id"},
    "portfolio-canary": {"task_id": "task_id"},
}


def ui_kwargs(route: str, values: dict) -> dict:
    return {kwarg: values[key] for kwarg, key in UI_KWARGS.get(route, {}).items()}


def dataset_upload() -> io.BytesIO:
    """A fresh file object for each call (a client reads it to the end)."""
    upload = io.BytesIO(CONTENT.replace(b"twice", b"three times"))
    upload.name = "tickets.jsonl"
    return upload


def build_world(*, actor, team) -> dict:
    """A chat dataset of ``team`` with one version of 12 rows."""
    dataset = services.create_dataset(actor=actor, owner_team=team, name="tickets", kind=DatasetKind.CHAT)
    pending = services.upload_version(
        actor=actor, dataset=dataset, chunks=[CONTENT], filename="tickets.jsonl", enqueue=False
    )
    version, _ = ingest.run_here(pending.pk)
    task = catalogue.create_task(actor=actor, owner_team=team, name="Ticket routing", kind="classification")
    eval_set = catalogue.add_eval_set(actor=actor, task=task, dataset_version=version, source="all")
    endpoint = Endpoint.objects.get(name="smol-ep")  # the world's endpoint of the team
    portfolio.set_production_endpoint(actor=actor, task=task, endpoint=endpoint)
    run = runs.start_run(
        actor=actor, task=task, eval_set=eval_set, endpoint=endpoint, row_limit=5, enqueue=False
    )
    return {
        "dataset": dataset.name,
        "dataset_id": dataset.pk,
        "filename": "train.jsonl",
        "ingest_id": pending.pk,
        "task_id": task.pk,
        "eval_set_id": eval_set.pk,
        "endpoint_id": endpoint.pk,
        "eval_run_id": run.pk,
        "run_id": run.pk,
    }
