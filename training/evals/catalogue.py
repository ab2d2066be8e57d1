"""The task catalogue: creating a task, registering its eval sets and deleting one (with its runs), each with
its audit row in the same transaction. A task belongs to a team; its eval sets are dataset versions of that
team."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid, NotFound
from training import dataset_purge
from training.choices import EvalSetSource, JobStatus, TaskKind
from training.evals.models import EvalSet, Task
from training.models import DatasetVersion


@transaction.atomic
def create_task(
    *, actor: Actor, owner_team: Team, name: str, kind: str, slug: str = "", description: str = ""
) -> Task:
    gate.require(actor, "training.run", owner_team)
    name = name.strip()
    if not 2 <= len(name) <= 120:
        raise Invalid(
            "name: Give the task a name of 2-120 characters.", fields={"name": ["2-120 characters."]}
        )
    if kind not in TaskKind.values:
        raise Invalid(
            f"kind: choose one of {', '.join(TaskKind.values)}.", fields={"kind": ["Unknown kind."]}
        )
    slug = slugify(slug or name)[:80]
    if len(slug) < 2:
        raise Invalid("slug: Use at least 2 letters or digits.", fields={"slug": ["At least 2 characters."]})
    task = Task(
        owner_team=owner_team,
        name=name,
        slug=slug,
        kind=kind,
        description=description.strip()[:5000],
        created_by=actor.user,
    )
    try:
        with transaction.atomic():
            task.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"{owner_team.name} already has a task {slug!r}.") from None
    audit.record(actor, "task.create", task, after=task.snapshot())
    return task


@transaction.atomic
def add_eval_set(
    *, actor: Actor, task: Task, dataset_version: DatasetVersion, source: str = EvalSetSource.EVAL_ROWS
) -> EvalSet:
    """Register a dataset version of the task's team as one of its eval sets (its held-out rows by
    default, or all its rows); the same registration twice returns the first."""
    gate.require(actor, "training.run", task)
    if source not in EvalSetSource.values:
        raise Invalid(f"source: choose one of {', '.join(EvalSetSource.values)}.")
    dataset_version = dataset_purge.ready(dataset_version)
    if dataset_version.dataset.owner_team_id != task.owner_team_id:
        raise Invalid(
            "dataset_version: an eval set is a dataset version of the task's team.",
            fields={"dataset_version": ["Choose a dataset version of the task's team."]},
        )
    existing = EvalSet.objects.filter(task=task, dataset_version=dataset_version, source=source).first()
    if existing is not None:
        return existing
    eval_set = EvalSet(task=task, dataset_version=dataset_version, source=source, created_by=actor.user)
    if eval_set.row_count == 0:
        raise Invalid(
            f"dataset_version: {dataset_version.label} has no {'held-out ' if source == 'eval' else ''}rows.",
            fields={"dataset_version": ["No rows to evaluate on."]},
        )
    try:
        with transaction.atomic():
            eval_set.save(force_insert=True)
    except IntegrityError:
        # The same registration at once, committed first (eval_set_unique_per_task): its row, as above.
        return EvalSet.objects.get(task=task, dataset_version=dataset_version, source=source)
    audit.record(actor, "eval_set.create", eval_set, after=eval_set.snapshot())
    return eval_set


@transaction.atomic
def delete_eval_set(*, actor: Actor, eval_set: EvalSet) -> int:
    """Delete an eval set and its runs, whose answers keep each row's prompt and expected answer: an erasure
    request can then purge the dataset version (``dataset_purge`` refuses while it is an eval set). Whoever
    may register one may delete it; refused while a run of it is queued or running (it reads the rows and
    writes its answers). Returns the number of runs deleted, which the audit row keeps with the eval set."""
    gate.require(actor, "training.run", eval_set.task)
    # FOR UPDATE: a run being started holds a key share of this row until it commits, so this waits for it and
    # then sees its row below; a run started after this lock waits for it, and fails once the row is gone.
    locked = (
        EvalSet.objects.select_for_update(of=("self",))
        .select_related("task__owner_team", "dataset_version__dataset")
        .filter(pk=eval_set.pk)
        .first()
    )
    if locked is None:  # deleted by another request while this one waited for the lock (a double click)
        raise NotFound("Eval set not found.")
    eval_set = locked
    in_flight = list(
        eval_set.runs.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if in_flight:
        named = ", ".join(f"#{pk}" for pk in in_flight)
        raise Conflict(
            f"{eval_set.label} cannot be deleted: eval run{'s' if len(in_flight) > 1 else ''} {named} of it "
            f"{'are' if len(in_flight) > 1 else 'is'} queued or running; cancel {'them' if len(in_flight) > 1 else 'it'} "
            "or wait for the end."
        )
    deleted = eval_set.runs.count()
    before = {**eval_set.snapshot(), "label": eval_set.label, "runs_deleted": deleted}
    audit.record(actor, "eval_set.delete", eval_set, before=before)
    eval_set.delete()  # its runs go with it (on_delete=CASCADE)
    return deleted
