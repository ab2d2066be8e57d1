"""Eval runs of endpoints: started by people (queued, then run by a worker), cancelled, and run row by row
through the gateway with bounded concurrency. A run ends succeeded with its scores, cancelled, or failed
with the reason; a run whose worker died is failed by the reaper (``reap_stale``): none stays running."""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook, priced
from portfolio.errors import Conflict, Invalid, NotFound
from serving.choices import EndpointKind
from serving.models import Endpoint
from training import dataset_purge, evaluation, long_queue, services
from training.choices import EvalSetSource, JobStatus, Split, TaskKind
from training.evals import comparability, gateway, judging, metrics, sampling
from training.evals.models import EndpointEvalRun, EvalSet, Task

logger = logging.getLogger(__name__)
SYSTEM = Actor.for_system("training.evals")
MAX_ROWS = 2000
DEFAULT_ROWS = 200
MAX_CONCURRENCY = 16
# A queued run no worker took up within QUEUED_AT_MOST is sent again (its message lost, or the long workers busy:
# a copy finds it claimed and leaves it), and again each QUEUED_AT_MOST; one still queued after GIVE_UP_AFTER is
# failed (no long worker runs?).
QUEUED_AT_MOST = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(hours=6)
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
    judge: Endpoint | None = None,
    rubric: str = "",
    enqueue: bool = True,
) -> EndpointEvalRun:
    """Queue a run of ``endpoint`` on one of the task's eval sets, for the task's team: the endpoint must
    be one that team may call (its own, or shared with it), since its calls are billed to it. A ``judge``
    (an endpoint the team may call, billed to it too) scores each answer against the ``rubric``."""
    gate.require(actor, "training.run", task)
    if eval_set.task_id != task.pk:
        raise NotFound("Eval set not found.")
    if not Endpoint.objects.callable_by(task.owner_team).filter(pk=endpoint.pk).exists():
        raise NotFound("Endpoint not found.")
    rubric = rubric.strip()
    if judge is not None and not Endpoint.objects.callable_by(task.owner_team).filter(pk=judge.pk).exists():
        raise NotFound("Judge endpoint not found.")
    if len(rubric) > judging.MAX_RUBRIC:
        raise Invalid(
            f"rubric: at most {judging.MAX_RUBRIC} characters.",
            fields={"rubric": [f"At most {judging.MAX_RUBRIC} characters."]},
        )
    if rubric and judge is None:
        raise Invalid(
            "judge: a rubric needs a judge endpoint.", fields={"judge": ["Choose a judge endpoint."]}
        )
    # The eval set's rows: not archived (nor their files deleted) until this run's row is in.
    dataset_purge.ready(eval_set.dataset_version, "eval_set")
    # Runs share the long control workers with every team's merges, imports and ingests: a team keeps at
    # most a few in flight, checked under its row's lock.
    Team.objects.select_for_update(no_key=True).filter(pk=task.owner_team_id).first()
    # The eval set under its lock: one deleted meanwhile (catalogue.delete_eval_set, which refuses while a run
    # is in flight) is not found, rather than failing this run's insert on its foreign key (a 500).
    if EvalSet.objects.select_for_update(no_key=True).filter(pk=eval_set.pk).first() is None:
        raise NotFound("Eval set not found.")
    in_flight = EndpointEvalRun.objects.filter(
        owner_team_id=task.owner_team_id, status__in=(JobStatus.QUEUED, JobStatus.RUNNING)
    ).count()
    if in_flight >= settings.EVAL_RUNS_PER_TEAM:
        raise Conflict(
            f"{task.owner_team.name} has {in_flight} eval runs queued or running, the most at once "
            f"({settings.EVAL_RUNS_PER_TEAM}); start this one when one of them ends, or cancel one."
        )
    run = EndpointEvalRun.objects.create(
        owner_team=task.owner_team,
        eval_set=eval_set,
        endpoint=endpoint,
        endpoint_name=endpoint.name,
        row_limit=_bounded(row_limit, 1, MAX_ROWS, "row_limit"),
        concurrency=_bounded(concurrency, 1, MAX_CONCURRENCY, "concurrency"),
        max_tokens=_bounded(max_tokens, 1, 4096, "max_tokens"),
        judge_endpoint=judge,
        judge_endpoint_name=judge.name if judge else "",
        rubric=rubric,
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


def finish(
    run_id: int,
    status: str,
    detail: str = "",
    scores: dict | None = None,
    answers: list[dict] | None = None,
    *,
    was: str = JobStatus.RUNNING,
    unless_cancelled: bool = False,
) -> bool:
    """Compare-and-swap from running (or ``was``; and not asked to cancel, ``unless_cancelled``), with its
    audit row in the same transaction."""
    fields: dict = {"metrics": scores} if scores is not None else {}
    if answers is not None:
        fields["answers"] = answers
    ending = EndpointEvalRun.objects.filter(pk=run_id, status=was)
    if unless_cancelled:
        ending = ending.filter(cancel_requested=False)
    with transaction.atomic():
        updated = ending.update(
            status=status, status_detail=detail[:4000], finished_at=timezone.now(), **fields
        )
        if updated:
            run = EndpointEvalRun.objects.get(pk=run_id)
            audit.record(SYSTEM, "eval.run_finish", run, after=run.snapshot())
    return bool(updated)


def reap_stale(after: timedelta, queued_after: timedelta = QUEUED_AT_MOST) -> list[int]:
    """Running runs whose worker has not beaten for ``after`` end failed (a worker that died), or cancelled
    when cancel was asked for; queued ones are sent again or failed (``_waited_too_long``). The runs ended."""
    now = timezone.now()
    cutoff = now - after
    stale = list(
        EndpointEvalRun.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).values_list(
            "pk", "cancel_requested", "owner_team_id"
        )
    )
    ended = []
    for pk, cancel_requested, team_id in stale:
        if cancel_requested:
            done = finish(pk, JobStatus.CANCELLED, "Cancelled (its worker had stopped answering).")
        else:
            done = finish(pk, JobStatus.FAILED, "Its worker stopped answering; start the run again.")
        if done:
            # The dead worker could not revoke the service keys it called with.
            gateway.revoke_left_keys(team_id, [f"eval run #{pk}", f"eval run #{pk} (judge)"])
            ended.append(pk)
    return ended + _waited_too_long(now, queued_after)


def _waited_too_long(now, queued_after: timedelta) -> list[int]:
    """Queued runs none took up: sent again, failed after ``GIVE_UP_AFTER`` (``long_queue``); a queued run counts
    against its team's runs in flight."""
    return long_queue.resend_or_give_up(
        EndpointEvalRun.objects.filter(status=JobStatus.QUEUED),
        label="eval run",
        now=now,
        queued_after=queued_after,
        give_up_after=GIVE_UP_AFTER,
        send=enqueue_run,
        fail=lambda pk, reason: finish(pk, JobStatus.FAILED, reason, was=JobStatus.QUEUED),
        advice="start the run again.",
    )


def sampled_rows(eval_set: EvalSet, limit: int) -> list[tuple[int, dict]]:
    """The rows a run of ``limit`` rows scores, with their positions in the eval set (the held-out rows, or all
    rows, training rows first): all of them when they fit, else ``limit`` spread over the set (sampling.py)."""
    version = eval_set.dataset_version
    splits = [Split.EVAL] if eval_set.source == EvalSetSource.EVAL_ROWS else [Split.TRAIN, Split.EVAL]
    parts = [services.split_rows(version, split) for split in splits]
    wanted = sampling.positions(sum(len(part) for part in parts), limit, eval_set.pk)
    found: list[tuple[int, dict]] = []
    base = 0
    for part in parts:
        mine = [position - base for position in wanted if base <= position < base + len(part)]
        found += [(base + item["index"] - 1, item["row"]) for item in part.at(mine)]  # one pass a part
        base += len(part)
    return found


def rows_of(eval_set: EvalSet, limit: int) -> list[dict]:
    """The rows a run of ``limit`` rows scores (sampled_rows'), without their positions."""
    return [row for _, row in sampled_rows(eval_set, limit)]


def labels_of(eval_set: EvalSet) -> set[str]:
    """The labels (expected answers, normalised) of every row a run of the eval set may score: an answer is
    matched against all of them, so a short run scores its rows as a long one does."""
    return {metrics.normalise(evaluation.expected_answer(row)) for row in rows_of(eval_set, MAX_ROWS)}


def execute(run_id: int) -> None:
    """The worker's part: claim a queued run, score it, and end it whatever happens."""
    now = timezone.now()
    endpoint_id = EndpointEvalRun.objects.filter(pk=run_id).values_list("endpoint_id", flat=True).first()
    # What the endpoint routes to as its rows are sent: what the run measures (a canary of it checks it).
    measured = comparability.measured_now(endpoint_id) if endpoint_id else []
    claimed = EndpointEvalRun.objects.filter(pk=run_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, measured_routes=measured
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


def _beat(run_id: int, done: int | None) -> None:
    progress = {"rows_done": done} if done is not None else {}
    EndpointEvalRun.objects.filter(pk=run_id, status=JobStatus.RUNNING).update(
        heartbeat_at=timezone.now(), **progress
    )


def _answer_all(
    run: EndpointEvalRun,
    conversations: list[list[dict]],
    client,
    endpoint_name: str,
    max_tokens: int,
    *,
    count=True,
) -> list[gateway.Answer] | None:
    """Every conversation's answer in order, ``run.concurrency`` requests in flight, in batches between which
    a cancel is noticed (None: cancelled). The worker beats while it waits, however slow the endpoint; the
    rows' progress is counted when ``count`` (the answers), not for the judge's scores."""
    answers: list[gateway.Answer] = []
    batch = run.concurrency * 2

    def beat(done: int) -> None:
        _beat(run.pk, done if count else None)

    pool = ThreadPoolExecutor(max_workers=run.concurrency)
    try:
        for start in range(0, len(conversations), batch):
            if _cancelled(run.pk):
                return None
            futures = [
                pool.submit(gateway.ask, client, endpoint_name, messages, max_tokens)
                for messages in conversations[start : start + batch]
            ]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=BEAT_SECONDS, return_when=FIRST_EXCEPTION)
                failed = next((f.exception() for f in futures if f.done() and f.exception()), None)
                if failed is not None:
                    raise failed
                beat(len(answers) + sum(f.done() for f in futures))
            answers += [future.result() for future in futures]
            beat(len(answers))
    finally:
        # Not the pool's ``with``, whose exit waits for the calls in flight (a generation may take minutes)
        # without beating, so the reaper would fail the run with its own reason before the real one is
        # written. On a failure the rows not yet sent are not sent, and the run ends at once: a call still in
        # flight finishes in its thread, its answer dropped (only this thread writes the run's results), its
        # key revoked as the caller's ``client_for`` closes.
        pool.shutdown(wait=False, cancel_futures=True)
    return answers


def _score(run: EndpointEvalRun) -> None:
    if run.endpoint_id is None:
        raise gateway.GatewayRefused(f"The endpoint {run.endpoint_name} was deleted.")
    if run.judge_endpoint_name and run.judge_endpoint_id is None:
        raise gateway.GatewayRefused(f"The judge endpoint {run.judge_endpoint_name} was deleted.")
    sampled = sampled_rows(run.eval_set, run.row_limit)
    rows = [row for _, row in sampled]
    EndpointEvalRun.objects.filter(pk=run.pk).update(rows_total=len(rows))
    price = PriceBook.load(kinds=[PriceKind.ENDPOINT]).at(PriceKind.ENDPOINT, run.endpoint_id, timezone.now())
    if not priced(price):
        price = None  # billing charges its calls at cost (a share of compute), not at 0
    questions = [evaluation.prompt_messages(row) for row in rows]
    with gateway.client_for(run.owner_team, run.endpoint_name, f"eval run #{run.pk}") as client:
        answers = _answer_all(run, questions, client, run.endpoint_name, run.max_tokens)
    metered = None
    if answers is not None and run.endpoint is not None and run.endpoint.kind != EndpointKind.PLAIN:
        # A router, cascade or vote bills its hops, each at its own price: what its key was charged.
        metered = gateway.metered_cost(client.key_id, run.endpoint_name, len(answers))
        price = None  # none of its own is billed: its hops' (metered), or not priced (a hop is not)
    verdicts: list[float | None] | None = None
    if answers is not None and run.judge_endpoint_name and not _cancelled(run.pk):
        verdicts = _judge(run, rows, questions, answers)
    if answers is None or (run.judge_endpoint_name and verdicts is None) or _cancelled(run.pk):
        done = EndpointEvalRun.objects.values_list("rows_done", flat=True).get(pk=run.pk)
        finish(run.pk, JobStatus.CANCELLED, f"Cancelled after {done} of {len(rows)} rows.")
        return
    kind = run.eval_set.task.kind
    labels = labels_of(run.eval_set) if kind == TaskKind.CLASSIFICATION else None
    succeeded = finish(
        run.pk,
        JobStatus.SUCCEEDED,
        scores=summarise(kind, rows, answers, price, verdicts, metered=metered, labels=labels),
        answers=answer_rows(kind, rows, answers, verdicts, labels=labels, positions=[p for p, _ in sampled]),
        unless_cancelled=True,  # a cancel asked since the check above is not overwritten by a success
    )
    if not succeeded:
        finish(run.pk, JobStatus.CANCELLED, f"Cancelled after {len(rows)} of {len(rows)} rows.")


def _judge(
    run: EndpointEvalRun, rows: list[dict], questions: list[list[dict]], answers: list[gateway.Answer]
) -> list[float | None] | None:
    """The judge's score of each answer (None where its reply says no readable score); None: cancelled."""
    conversations = [
        judging.messages(run.rubric, question, evaluation.expected_answer(row), answer.text)
        for row, question, answer in zip(rows, questions, answers, strict=True)
    ]
    label = f"eval run #{run.pk} (judge)"
    with gateway.client_for(run.owner_team, run.judge_endpoint_name, label) as client:
        replies = _answer_all(
            run, conversations, client, run.judge_endpoint_name, judging.JUDGE_MAX_TOKENS, count=False
        )
    return None if replies is None else [judging.score(reply.text) for reply in replies]


MAX_STORED_PROMPT, MAX_STORED_ANSWER = 500, 1000


def answer_rows(
    kind: str,
    rows: list[dict],
    answers: list[gateway.Answer],
    verdicts: list[float | None] | None,
    *,
    labels: set[str] | None = None,
    positions: list[int] | None = None,
) -> list[dict]:
    """What the run keeps per row for the side-by-side: the row's position in the eval set (``positions``,
    sampled_rows'; the list's order without them), the question's last message, the expected and the given
    answer (cut short), right or not by the task's measure (``labels``: the eval set's, ``labels_of``), and
    the judge's score."""
    expected = [evaluation.expected_answer(row) for row in rows]
    right = metrics.row_verdicts(kind, expected, [a.text for a in answers], labels=labels)
    kept = []
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        question = evaluation.prompt_messages(row)
        kept.append(
            {
                "row": positions[i] if positions is not None else i,
                "prompt": str(question[-1].get("content", "") if question else "")[:MAX_STORED_PROMPT],
                "expected": expected[i][:MAX_STORED_ANSWER],
                "answer": answer.text[:MAX_STORED_ANSWER],
                "correct": right[i],
                "judge": verdicts[i] if verdicts is not None else None,
            }
        )
    return kept


def summarise(
    kind: str,
    rows: list[dict],
    answers: list[gateway.Answer],
    price,
    verdicts: list[float | None] | None = None,
    *,
    metered=None,
    labels: set[str] | None = None,
) -> dict:
    """A run's metrics from its rows and the endpoint's answers; ``price``: the endpoint's price in force
    (billing's), None when it has none; ``verdicts``: the judge's scores, when the run has a judge;
    ``metered``: what billing charged for the rows' calls in all (a composite endpoint: its hops, each at
    its own price), which then gives the cost instead of ``price``; ``labels``: the eval set's labels
    (``labels_of``) a classification answer is matched against."""
    scores = metrics.answer_scores(
        kind, [evaluation.expected_answer(row) for row in rows], [a.text for a in answers], labels=labels
    )
    latencies = [a.latency_s * 1000 for a in answers]
    seconds = sum(a.latency_s for a in answers)
    output = sum(a.output_tokens for a in answers)
    tokens = [(a.input_tokens, a.output_tokens) for a in answers]
    if metered is not None:
        cost = metered / len(answers) * 1000 if answers else None
        price = None  # the hops' prices, not one of the endpoint's own
    else:
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
        **({"billed": str(metered)} if metered is not None else {}),
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
    if verdicts is not None:
        scores.update(metrics.judge_scores(verdicts))
    return scores
