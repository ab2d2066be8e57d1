"""Eval runs of endpoints: started by people (queued, then run by a worker), cancelled, and run row by row
through the gateway with bounded concurrency. A run ends succeeded with its scores, cancelled, or failed
with the reason; a run whose worker died is failed by the reaper (``reap_stale``): none stays running."""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import timedelta

from celery import current_app
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook
from portfolio.errors import Conflict, Invalid, NotFound
from serving.models import Endpoint
from training import evaluation, services
from training.choices import EvalSetSource, JobStatus, Split
from training.evals import gateway, metrics
from training.evals.models import EndpointEvalRun, EvalSet, Task

logger = logging.getLogger(__name__)
SYSTEM = Actor.for_system("training.evals")
MAX_ROWS = 2000
DEFAULT_ROWS = 200
MAX_CONCURRENCY = 16
BEAT_SECONDS = 5.0  # the worker's heartbeat while rows are answered (the reaper's limit is far longer)


def _bounded(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise Invalid(f"{field}: Use {low}-{high}.", fields={field: [f"Use {low}-{high}."]})
    return value


@transaction.atomic
def start_run(
    *,
    actor: Actor,
    task: Task,
    eval_set: EvalSet,
    endpoint: Endpoint,
    row_limit: int = DEFAULT_ROWS,
    concurrency: int = 4,
    max_tokens: int = 64,
    enqueue: bool = True,
) -> EndpointEvalRun:
    """Queue a run of ``endpoint`` on one of the task's eval sets, for the task's team: the endpoint must
    be one that team may call (its own, or shared with it), since its calls are billed to it."""
    gate.require(actor, "training.run", task)
    if eval_set.task_id != task.pk:
        raise NotFound("Eval set not found.")
    if not Endpoint.objects.callable_by(task.owner_team).filter(pk=endpoint.pk).exists():
        raise NotFound("Endpoint not found.")
    run = EndpointEvalRun.objects.create(
        owner_team=task.owner_team,
        eval_set=eval_set,
        endpoint=endpoint,
        endpoint_name=endpoint.name,
        row_limit=_bounded(row_limit, 1, MAX_ROWS, "row_limit"),
        concurrency=_bounded(concurrency, 1, MAX_CONCURRENCY, "concurrency"),
        max_tokens=_bounded(max_tokens, 1, 4096, "max_tokens"),
        rows_total=min(row_limit, eval_set.row_count),
        created_by=actor.user,
    )
    audit.record(actor, "eval.run_start", run, after=run.snapshot())
    if enqueue:
        transaction.on_commit(lambda: enqueue_run(run.pk))
    return run


def enqueue_run(run_id: int) -> None:
    """By the task's name: the task module builds on this one."""
    current_app.signature("training.run_endpoint_eval", args=[run_id]).apply_async()


@transaction.atomic
def cancel_run(*, actor: Actor, run: EndpointEvalRun) -> EndpointEvalRun:
    """A queued run ends at once; a running one stops before its next batch of rows."""
    gate.require(actor, "training.run", run)
    run = EndpointEvalRun.objects.select_for_update().get(pk=run.pk)
    if run.status in JobStatus.finished():
        raise Conflict(f"The run already {run.status}.")
    if run.status == JobStatus.QUEUED:
        run.status, run.finished_at = JobStatus.CANCELLED, timezone.now()
        run.status_detail = f"Cancelled by {actor.label} before it started."
        run.save(update_fields=["status", "finished_at", "status_detail"])
        audit.record(actor, "eval.run_finish", run, after=run.snapshot())
    else:
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
        audit.record(actor, "eval.run_cancel", run, after=run.snapshot())
    return run


def finish(run_id: int, status: str, detail: str = "", scores: dict | None = None) -> bool:
    """Compare-and-swap from running, with its audit row in the same transaction."""
    fields = {"metrics": scores} if scores is not None else {}
    with transaction.atomic():
        updated = EndpointEvalRun.objects.filter(pk=run_id, status=JobStatus.RUNNING).update(
            status=status, status_detail=detail[:4000], finished_at=timezone.now(), **fields
        )
        if updated:
            run = EndpointEvalRun.objects.get(pk=run_id)
            audit.record(SYSTEM, "eval.run_finish", run, after=run.snapshot())
    return bool(updated)


def reap_stale(after: timedelta) -> list[int]:
    """Running runs whose worker has not beaten for ``after`` end failed (a worker that died), or cancelled
    when cancel was asked for."""
    cutoff = timezone.now() - after
    stale = list(
        EndpointEvalRun.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).values_list(
            "pk", "cancel_requested"
        )
    )
    ended = []
    for pk, cancel_requested in stale:
        if cancel_requested:
            done = finish(pk, JobStatus.CANCELLED, "Cancelled (its worker had stopped answering).")
        else:
            done = finish(pk, JobStatus.FAILED, "Its worker stopped answering; start the run again.")
        if done:
            ended.append(pk)
    return ended


def rows_of(eval_set: EvalSet, limit: int) -> list[dict]:
    """The first ``limit`` rows of the eval set: the held-out rows, or all rows (training rows first)."""
    version = eval_set.dataset_version
    splits = [Split.EVAL] if eval_set.source == EvalSetSource.EVAL_ROWS else [Split.TRAIN, Split.EVAL]
    rows: list[dict] = []
    for split in splits:
        rows += [item["row"] for item in services.split_rows(version, split)[: limit - len(rows)]]
    return rows[:limit]


def execute(run_id: int) -> None:
    """The worker's part: claim a queued run, score it, and end it whatever happens."""
    now = timezone.now()
    claimed = EndpointEvalRun.objects.filter(pk=run_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now
    )
    if not claimed:
        return  # cancelled before it started, or run by another delivery
    try:
        _score(EndpointEvalRun.objects.select_related("eval_set__task", "owner_team").get(pk=run_id))
    except gateway.GatewayRefused as exc:
        finish(run_id, JobStatus.FAILED, str(exc))
    except Exception as exc:  # any failure ends the run failed, with why: never left running
        logger.exception("eval run #%s failed", run_id)
        finish(run_id, JobStatus.FAILED, f"The run failed: {exc.__class__.__name__}: {str(exc)[:500]}")


def _cancelled(run_id: int) -> bool:
    """Stop before the next rows: cancel was asked for, or the run no longer runs (the reaper failed it)."""
    return not EndpointEvalRun.objects.filter(
        pk=run_id, status=JobStatus.RUNNING, cancel_requested=False
    ).exists()


def _beat(run_id: int, done: int) -> None:
    EndpointEvalRun.objects.filter(pk=run_id, status=JobStatus.RUNNING).update(
        rows_done=done, heartbeat_at=timezone.now()
    )


def _answer_all(run: EndpointEvalRun, rows: list[dict], client) -> list[gateway.Answer] | None:
    """Every row's answer in row order, ``run.concurrency`` requests in flight, in batches between which a
    cancel is noticed (None: cancelled). The worker beats while it waits, however slow the endpoint."""
    answers: list[gateway.Answer] = []
    batch = run.concurrency * 2
    with ThreadPoolExecutor(max_workers=run.concurrency) as pool:
        for start in range(0, len(rows), batch):
            if _cancelled(run.pk):
                return None
            futures = [
                pool.submit(
                    gateway.ask, client, run.endpoint_name, evaluation.prompt_messages(row), run.max_tokens
                )
                for row in rows[start : start + batch]
            ]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=BEAT_SECONDS, return_when=FIRST_EXCEPTION)
                failed = next((f.exception() for f in futures if f.done() and f.exception()), None)
                if failed is not None:
                    for future in pending:
                        future.cancel()  # rows not yet sent are not sent
                    raise failed
                _beat(run.pk, len(answers) + sum(f.done() for f in futures))
            answers += [future.result() for future in futures]
            _beat(run.pk, len(answers))
    return answers


def _score(run: EndpointEvalRun) -> None:
    if run.endpoint_id is None:
        raise gateway.GatewayRefused(f"The endpoint {run.endpoint_name} was deleted.")
    rows = rows_of(run.eval_set, run.row_limit)
    EndpointEvalRun.objects.filter(pk=run.pk).update(rows_total=len(rows))
    price = PriceBook.load(kinds=[PriceKind.ENDPOINT]).at(PriceKind.ENDPOINT, run.endpoint_id, timezone.now())
    with gateway.client_for(run.owner_team, run.endpoint_name, f"eval run #{run.pk}") as client:
        answers = _answer_all(run, rows, client)
    if answers is None or _cancelled(run.pk):
        done = EndpointEvalRun.objects.values_list("rows_done", flat=True).get(pk=run.pk)
        finish(run.pk, JobStatus.CANCELLED, f"Cancelled after {done} of {len(rows)} rows.")
        return
    finish(run.pk, JobStatus.SUCCEEDED, scores=summarise(run.eval_set.task.kind, rows, answers, price))


def summarise(kind: str, rows: list[dict], answers: list[gateway.Answer], price) -> dict:
    """A run's metrics from its rows and the endpoint's answers; ``price``: the endpoint's price in force
    (billing's), None when it has none."""
    scores = metrics.answer_scores(
        kind, [evaluation.expected_answer(row) for row in rows], [a.text for a in answers]
    )
    latencies = [a.latency_s * 1000 for a in answers]
    seconds = sum(a.latency_s for a in answers)
    output = sum(a.output_tokens for a in answers)
    tokens = [(a.input_tokens, a.output_tokens) for a in answers]
    cost = (
        metrics.cost_per_1k_requests(tokens, price.input_per_million, price.output_per_million)
        if price is not None
        else None
    )
    scores.update(
        latency_p50_ms=metrics.percentile(latencies, 50),
        latency_p95_ms=metrics.percentile(latencies, 95),
        tokens_per_second=output / seconds if seconds else None,
        input_tokens=sum(i for i, _ in tokens),
        output_tokens=output,
        cost_per_1k_requests=float(round(cost, 6)) if cost is not None else None,
        price=(
            {
                "id": price.pk,
                "input_per_million": str(price.input_per_million),
                "output_per_million": str(price.output_per_million),
            }
            if price is not None
            else None
        ),
    )
    return scores
