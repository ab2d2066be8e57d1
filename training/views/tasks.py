"""The task pages: the catalogue of tasks, a new task, a task with its eval sets (added or deleted), each
eval set's leaderboard (the front marked) and recent runs, starting an eval run of an endpoint, and a run's
page (polled while it runs) with its cancel button, and finished runs side by side."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Team
from portfolio.buttons import press
from portfolio.errors import Invalid, NotFound
from portfolio.formviews import submit
from training.evals import catalogue, runs, side_by_side
from training.evals.leaderboard import figures, leaderboards, quality_cost_chart
from training.evals.models import EndpointEvalRun, EvalSet, Task
from training.forms.tasks import EvalRunForm, EvalSetForm, TaskForm
from training.views.evals import confusion_table

RUN_POLL_SECONDS = 2
COMPARE_PAGE_ROWS = 50


def _task(actor: Actor, task_id: int) -> Task:
    """A task the actor may see, else 404."""
    found = gate.visible(actor, Task).select_related("owner_team").filter(pk=task_id).first()
    if found is None:
        raise NotFound("Task not found.")
    return found


def _run(actor: Actor, run_id: int) -> EndpointEvalRun:
    found = (
        gate.visible(actor, EndpointEvalRun)
        .defer("answers")  # the side by side reads them, not the run's page
        .select_related("eval_set__task__owner_team", "eval_set__dataset_version__dataset", "created_by")
        .filter(pk=run_id)
        .first()
    )
    if found is None:
        raise NotFound("Eval run not found.")
    return found


@require_GET
def task_list(request):
    """Permission: any signed-in user; ``gate.visible`` lists only the tasks of their teams (all for
    org-wide roles)."""
    actor = actor_of(request)
    tasks = gate.visible(actor, Task).select_related("owner_team").order_by("owner_team__slug", "slug")
    context = {"page": listing.paginate(request, tasks), "can_create": gate.can(actor, "training.run")}
    return render(request, "training/task_list.html", context)


@require_http_methods(["GET", "POST"])
def task_create(request):
    """Permission: ``training.run`` in some team (owner or engineer), and in the team chosen: a team the
    actor may not see answers 404, one they may see but not train in 403."""
    actor = actor_of(request)
    gate.require(actor, "training.run")
    if request.method == "POST" and request.POST.get("owner_team"):
        team = gate.get_visible(actor, Team, pk=request.POST["owner_team"])
        gate.require(actor, "training.run", team)
    form = TaskForm(request.POST if request.method == "POST" else None, actor=actor)

    def create() -> Task:
        data = form.cleaned_data
        return catalogue.create_task(
            actor=actor,
            owner_team=data["owner_team"],
            name=data["name"],
            kind=data["kind"],
            description=data["description"],
        )

    done = submit(
        request,
        form,
        create,
        success=lambda task: f"Task {task.name} created: add an eval set to score endpoints on it.",
        then=lambda task: redirect("task-detail", task_id=task.pk),
    )
    return done or render(request, "training/task_form.html", {"form": form})


def _detail_context(actor: Actor, task: Task, **forms) -> dict:
    can_run = gate.can(actor, "training.run", task)
    eval_sets = list(task.eval_sets.select_related("dataset_version__dataset").order_by("-created_at", "-id"))
    boards = leaderboards(eval_sets)
    for eval_set in eval_sets:
        eval_set.board = boards[eval_set.pk]
        eval_set.chart = quality_cost_chart(eval_set.board, settings.BILLING_CURRENCY)
        eval_set.chart_id = f"quality-cost-{eval_set.pk}"
    recent = (
        EndpointEvalRun.objects.filter(eval_set__task=task)
        .defer("answers")
        .select_related("eval_set__dataset_version__dataset")
        .order_by("-created_at", "-id")[:20]
    )
    return {
        "task": task,
        "eval_sets": eval_sets,
        "runs": recent,
        "can_run": can_run,
        "set_form": forms.get("set_form") or (EvalSetForm(task=task) if can_run else None),
        "run_form": forms.get("run_form") or (EvalRunForm(task=task) if can_run and eval_sets else None),
        "currency": settings.BILLING_CURRENCY,
    }


def _task_page(request, actor: Actor, task: Task, *, status: int = 200, **forms):
    """The task's page; a refused form (``set_form``, ``run_form``) comes back on it with a 400."""
    return render(request, "training/task_detail.html", _detail_context(actor, task, **forms), status=status)


@require_GET
def task_detail(request, task_id: int):
    """Permission: the task is visible (its team's members, org-wide roles), else 404. The forms to add an
    eval set and to start a run show to those with ``training.run`` in its team."""
    actor = actor_of(request)
    return _task_page(request, actor, _task(actor, task_id))


@require_POST
def task_eval_set_add(request, task_id: int):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the dataset
    version must be one of the task's team (the form offers only those)."""
    actor = actor_of(request)
    task = _task(actor, task_id)
    gate.require(actor, "training.run", task)
    form = EvalSetForm(request.POST, task=task)

    def add():
        data = form.cleaned_data
        return catalogue.add_eval_set(
            actor=actor, task=task, dataset_version=data["dataset_version"], source=data["source"]
        )

    done = submit(
        request,
        form,
        add,
        success=lambda eval_set: f"Eval set {eval_set.label} added.",
        then=lambda eval_set: redirect("task-detail", task_id=task.pk),
    )
    return done or _task_page(request, actor, task, status=400, set_form=form)


@require_POST
def task_eval_set_delete(request, task_id: int, eval_set_id: int):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the eval set one
    of the task's (else 404). Deletes it with its runs; a run of it queued or running is the refusal shown."""
    actor = actor_of(request)
    task = _task(actor, task_id)
    gate.require(actor, "training.run", task)
    eval_set = (
        EvalSet.objects.filter(task=task, pk=eval_set_id).select_related("dataset_version__dataset").first()
    )
    if eval_set is None:
        raise NotFound("Eval set not found.")
    label = eval_set.label
    return press(
        request,
        lambda: catalogue.delete_eval_set(actor=actor, eval_set=eval_set),
        success=lambda deleted: (
            f"Eval set {label} deleted, with its {deleted} run{'s' if deleted != 1 else ''}."
        ),
        back=reverse("task-detail", args=[task.pk]),
    )


@require_POST
def task_run_start(request, task_id: int):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the endpoint
    one its team may call and the eval set one of the task's (the form offers only those)."""
    actor = actor_of(request)
    task = _task(actor, task_id)
    gate.require(actor, "training.run", task)
    form = EvalRunForm(request.POST, task=task)

    def start() -> EndpointEvalRun:
        data = form.cleaned_data
        return runs.start_run(
            actor=actor,
            task=task,
            eval_set=data["eval_set"],
            endpoint=data["endpoint"],
            row_limit=data["row_limit"],
            concurrency=data["concurrency"],
            max_tokens=data["max_tokens"],
            judge=data["judge"],
            rubric=data["rubric"],
        )

    done = submit(
        request,
        form,
        start,
        success=lambda run: f"Eval run #{run.pk} of {run.endpoint_name} queued.",
        then=lambda run: redirect("eval-run-detail", run_id=run.pk),
    )
    return done or _task_page(request, actor, task, status=400, run_form=form)


@require_GET
def task_compare(request, task_id: int):
    """Permission: the task visible (else 404) and each run one of its runs visible to the actor (else 404).
    Two to six finished runs on one eval set, row by row, differing answers first; a bad choice says why."""
    actor = actor_of(request)
    task = _task(actor, task_id)
    context: dict = {"task": task, "currency": settings.BILLING_CURRENCY}
    try:
        comparison = side_by_side.compare(actor=actor, task=task, run_ids=request.GET.getlist("run"))
    except Invalid as exc:
        return htmx.render(
            request, "training/task_compare.html", {**context, "refusal": exc.message}, status=400
        )
    context.update(
        comparison=comparison,
        columns=list(zip(comparison.runs, comparison.right, strict=True)),
        page=listing.paginate(request, comparison.rows, per_page=COMPARE_PAGE_ROWS),
        query=listing.query_without(request, "page"),
    )
    return htmx.page_or_fragment(
        request, "training/task_compare.html", "training/partials/compare_rows.html", context
    )


@require_GET
def eval_run_detail(request, run_id: int):
    """Permission: the run is visible (its team's members, org-wide roles), else 404. htmx gets the live
    part, polled every 2 s while the run is queued or running."""
    actor = actor_of(request)
    run = _run(actor, run_id)
    context = {
        "run": run,
        "task": run.eval_set.task,
        "polling": run.is_active,
        "poll_seconds": RUN_POLL_SECONDS,
        "can_run": gate.can(actor, "training.run", run),
        "f1_rows": sorted((run.metrics.get("f1_by_label") or {}).items()),
        "confusion": confusion_table(run.metrics.get("confusion") or {}),
        "figures": figures(run.metrics),
        "currency": settings.BILLING_CURRENCY,
    }
    return htmx.page_or_fragment(
        request, "training/eval_run_detail.html", "training/partials/eval_run_live.html", context
    )


@require_POST
def eval_run_cancel(request, run_id: int):
    """Permission: visible (else 404) and ``training.run`` in its team (else 403). A queued run ends at
    once; a running one stops before its next batch of rows."""
    actor = actor_of(request)
    run = _run(actor, run_id)
    gate.require(actor, "training.run", run)
    return press(
        request,
        lambda: runs.cancel_run(actor=actor, run=run),
        success=lambda done: (
            f"Eval run #{done.pk} cancelled."
            if not done.is_active
            else f"Stopping eval run #{done.pk}: it stops before its next rows."
        ),
        back=reverse("eval-run-detail", args=[run.pk]),
    )
