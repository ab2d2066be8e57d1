"""Training work: the node task that runs a job's child process and watches it; the control reaper; the
control task that ingests an uploaded dataset file; the control task that runs an endpoint's eval run, and
its reaper; the control task that merges an adapter into a full version in a child process started the
same way (``_start_child``), and its reaper."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import redis
from celery import shared_task
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.envparse import CONNECTION_KEYS, Env, database_url
from portfolio.errors import Invalid
from portfolio.leases import Lease
from serving.processes import log_tail
from training import finetune, ingest, job_reaper, lost_messages, metering, orphans, runner
from training.choices import JobStatus
from training.evals import runs as eval_runs
from training.merges import services as merges
from training.models import DatasetIngest, FineTuneJob

logger = logging.getLogger(__name__)


def _log_path(job_id: int) -> Path:
    return Path(settings.DATA_DIR) / "training" / f"job-{job_id}.log"


def _kill(pid: int, grace: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL what is left after ``grace``. ``process``: the group's
    leader when it is this process's child, reaped as soon as it exits (unreaped, it keeps the group alive
    to ``killpg`` and every stop would wait the whole grace)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None:
            process.poll()
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _reads(env: dict[str, str], read):
    """What a process started with ``env`` will read with ``read`` (an ``Env`` method), or None if it cannot."""
    try:
        return read(Env(env))
    except ImproperlyConfigured:
        return None


def _say(env: dict[str, str], name: str, value: str, *, contradicting: tuple[str, ...] = ()) -> None:
    """Set ``name`` outright, without the ``NAME_FILE`` (or the ``contradicting`` variables) that would refuse
    or override it."""
    for other in (f"{name}_FILE", *contradicting):
        env.pop(other, None)
    env[name] = value


def _trainer_env(job: FineTuneJob | None = None) -> dict[str, str]:
    """The trainer's environment: this process's own, so it reads its settings exactly as this process did
    (``*_FILE`` secrets stay files, the URLs keep their options), changed only where this process does not run
    on what its environment says (the embedded servers, a test database, a moved data folder); and of the
    machine's GPUs only those its job holds (none on a CPU pool)."""
    from django.db import connection

    env = dict(os.environ)
    db = {key: connection.settings_dict[key] for key in CONNECTION_KEYS}
    if _reads(env, Env.database) != db:
        # The password stays in DATABASE_PASSWORD(_FILE) when that is where this process found it.
        kept = _reads(env, lambda e: e.text("DATABASE_PASSWORD")) == db["PASSWORD"]
        url = database_url(db, with_password=not kept)
        _say(
            env,
            "DATABASE_URL",
            url,
            contradicting=() if kept else ("DATABASE_PASSWORD", "DATABASE_PASSWORD_FILE"),
        )
    if _reads(env, Env.redis_url) != settings.REDIS_URL:
        _say(env, "REDIS_URL", settings.REDIS_URL, contradicting=("REDIS_PASSWORD", "REDIS_PASSWORD_FILE"))
    for name, value in {
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,  # the development key is kept in the data folder
        "PORTFOLIO_DATA_DIR": str(settings.DATA_DIR),
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PORTFOLIO_ARTIFACT_CACHE": str(settings.ARTIFACT_CACHE),
        "PORTFOLIO_GATEWAY_URL": settings.GATEWAY_INTERNAL_URL,
    }.items():
        if _reads(env, lambda e, name=name: e.text(name)) != value:
            _say(env, name, value)
    env["PYTHONUNBUFFERED"] = "1"
    if job is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in job.gpu_indices)
        # Numbered as nvidia-smi numbers them (what the agent reports), not fastest first.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def _start_child(module: str, job_id: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A job's heavy work as ``python -m <module> <job id>``: in a process group of its own (``_kill`` stops
    all of it), its output appended to ``log``. Fine-tunes (``training.runner``) and merges
    (``training.merges.runner``) both run so."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", module, str(job_id)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=log.parent,
        )


def _exit_reason(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"code {code}"


def _alive(pid: int | None, job_id: int) -> bool:
    """Whether ``pid`` is job ``job_id``'s trainer (``_start_child``'s argv ends ``training.runner <id>``):
    after a restart a pid can be reused by another job's trainer, which must not be adopted (nor killed)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.cmdline()[-2:] == [
            "training.runner",
            str(job_id),
        ]
    except psutil.NoSuchProcess:
        return False


def attempt_lease(job: FineTuneJob) -> Lease:
    """One watcher per attempt of a job: a redelivery of its task (the broker's visibility timeout, a worker
    process that died) finds the live watcher's lease and leaves the job alone."""
    return Lease(f"training.run_job:{job.pk}:{job.attempt}")


def _placed_here() -> Q:
    """In a node agent, the jobs placed on this machine. A copy of a job's message can outlive its place: a
    worker killed mid-task has it redelivered to its node's queue, and the job may have been moved to
    another node meanwhile (the reaper's requeue). That copy must not start it here, on GPUs it holds
    there, nor adopt a pid of that machine. Elsewhere (a test calling the task) every job."""
    if os.environ.get("PORTFOLIO_NODE_AGENT") != "1":
        return Q()
    return Q(node__name=settings.NODE_NAME)


@shared_task(name="training.run_job", acks_late=True)
def run_job(job_id: int) -> None:
    """Claim a queued job, start its trainer process (own process group), and watch it to the end."""
    claimed = (
        FineTuneJob.objects.filter(pk=job_id, status=JobStatus.QUEUED)
        .filter(_placed_here())
        .update(status=JobStatus.RUNNING, attempt=F("attempt") + 1, heartbeat_at=timezone.now())
    )
    job = FineTuneJob.objects.get(pk=job_id)
    if not claimed and not FineTuneJob.objects.filter(pk=job_id).filter(_placed_here()).exists():
        logger.warning("fine-tune #%s is placed on another node: this copy of its message leaves it", job_id)
        return
    if claimed:
        lease = attempt_lease(job)
        if not lease.acquire(wait=False):  # a new attempt's lease is free: another claimed it, somehow
            logger.error(
                "fine-tune #%s attempt %s: its lease is held by %s", job_id, job.attempt, lease.holder()
            )
            return
        with lease.kept():
            began = timezone.now()
            if job.started_at is None:
                FineTuneJob.objects.filter(pk=job_id).update(started_at=began)
            metering.attempt_started(job, began)
            process = _start_child("training.runner", job_id, _log_path(job_id), _trainer_env(job))
            FineTuneJob.objects.filter(pk=job_id).update(pid=process.pid)
            _watch(job_id, process.pid, process, lease, job.attempt)
    elif job.status == JobStatus.RUNNING and job.pid and _alive(job.pid, job_id):
        lease = attempt_lease(job)
        if not lease.acquire():
            logger.info(
                "fine-tune #%s attempt %s is watched by a live delivery (%s); this redelivery leaves it alone",
                job_id,
                job.attempt,
                lease.holder(),
            )
            return
        with lease.kept():
            # Redelivered after its watcher died: adopt the trainer, if it still runs the same attempt.
            if FineTuneJob.objects.filter(
                pk=job_id, status=JobStatus.RUNNING, attempt=job.attempt, pid=job.pid
            ).exists() and _alive(job.pid, job_id):
                _watch(job_id, job.pid, None, lease, job.attempt)


def _regained(job_id: int, lease: Lease, still_mine, attempt: int) -> bool:
    """Whether a lost lease is this watcher's again: one that lapsed only (Redis away longer than its expiry,
    or restarted without it) is free, and is taken back while the job is still this attempt's, run by this
    trainer (``still_mine``): nobody else watched it meanwhile, for a redelivery that adopted it holds the lease
    or has ended the attempt. Stepping aside there would leave the trainer to be stopped as an orphan and the
    attempt to the reaper: one Redis outage would cost every running fine-tune an attempt. A database or
    Redis error leaves the lease lost, to be tried again at the next look."""
    try:
        if not lease.regain(still_mine.exists):
            return False
    except (DatabaseError, redis.RedisError) as exc:
        logger.warning(
            "fine-tune #%s attempt %s: its lease could not be taken back yet (%s)", job_id, attempt, exc
        )
        time.sleep(5)
        return True  # looked at again in the next round
    logger.warning("fine-tune #%s attempt %s: its lease had lapsed; taken back", job_id, attempt)
    return True


def _watch(job_id: int, pid: int, process: subprocess.Popen | None, lease: Lease, attempt: int) -> None:
    # What it writes is its attempt's: once a later attempt has the job (this node went silent, say), the job
    # is that attempt's watcher's to beat, requeue or fail.
    mine = FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, attempt=attempt)
    started = time.monotonic()
    last_beat = 0.0
    while True:
        if lease.lost.is_set() and not _regained(job_id, lease, mine.filter(pid=pid), attempt):
            break
        exited = process.poll() is not None if process else not _alive(pid, job_id)
        if exited:
            break
        now = time.monotonic()
        if now - last_beat >= settings.TRAINING_HEARTBEAT_SECONDS:
            last_beat = now
            try:
                if _beat(job_id, mine, attempt, pid, process):
                    break
            except (DatabaseError, OSError):
                # The database gone a moment: the trainer goes on, and so does its watcher, which counts its
                # compute and ends the attempt; if the job went to another attempt meanwhile, a later beat
                # finds out and stops the trainer.
                logger.exception("fine-tune #%s attempt %s: heartbeat failed; trying again", job_id, attempt)
                _reconnect()
        time.sleep(0.5)
    lost = lease.lost.is_set()
    # Paused past its lease's expiry, this watcher was replaced by a redelivery, which counts from its own start:
    # this one counts up to its last renewal only, so no second is counted twice.
    elapsed = max(0.0, (lease.renewed_at if lost else time.monotonic()) - started)
    # The database gone a moment now would end the task: the compute uncounted, the job left to the reaper.
    # Each write is tried again on its own, so that one that went through is not made twice.
    _retried(job_id, attempt, "count its compute", lambda: _count_compute(job_id, elapsed))
    # The log shown is the attempt's that has the job (a later one's may be on another node).
    _retried(
        job_id,
        attempt,
        "keep its log",
        lambda: FineTuneJob.objects.filter(pk=job_id, attempt=attempt).update(
            log_tail=log_tail(_log_path(job_id), 30)
        ),
    )
    if lost:
        return  # the trainer and its outcome belong to the new watcher
    _remove_work(job_id, attempt)
    _retried(job_id, attempt, "end the attempt", lambda: _end_attempt(job_id, attempt, process, mine))


# Waits (seconds) between tries of a write at the end of an attempt: about a minute in all.
END_RETRY_WAITS = (1, 2, 4, 8, 16, 32)


def _retried(job_id: int, attempt: int, what: str, write):
    """``write()``, tried again over ``END_RETRY_WAITS`` while the database (or a file) fails."""
    for wait in (*END_RETRY_WAITS, None):
        try:
            return write()
        except (DatabaseError, OSError):
            if wait is None:
                raise
            logger.exception("fine-tune #%s attempt %s: could not %s; trying again", job_id, attempt, what)
            _reconnect()
            time.sleep(wait)
    return None


def _reconnect() -> None:
    """Drop a connection the database closed, so that the next query makes a new one."""
    if not connection.in_atomic_block:
        with contextlib.suppress(Exception):
            connection.close_if_unusable_or_obsolete()


def _count_compute(job_id: int, elapsed: float) -> None:
    cores = psutil.cpu_count() or 1
    gpus = len(FineTuneJob.objects.values_list("gpu_indices", flat=True).get(pk=job_id))
    FineTuneJob.objects.filter(pk=job_id).update(  # every attempt's compute counts
        compute_seconds=F("compute_seconds") + elapsed,
        cpu_core_seconds=F("cpu_core_seconds") + elapsed * cores,
        gpu_seconds=F("gpu_seconds") + elapsed * gpus,
    )


def _end_attempt(job_id: int, attempt: int, process: subprocess.Popen | None, mine) -> None:
    """The trainer has exited: its attempt's meter closes, and the job is requeued, failed or cancelled (or,
    its version registered, succeeded: ``job_reaper.end_unfinished``) unless the trainer said how it ended.
    Tried again as a whole: each step checks what is done."""
    job = FineTuneJob.objects.get(pk=job_id)
    metering.attempt_ended(job, timezone.now(), attempt)
    if job.status != JobStatus.RUNNING or job.attempt != attempt:
        return  # the trainer finished (or was cancelled) and said so, or a later attempt has the job
    code = process.returncode if process else None
    why = f"the trainer exited ({_exit_reason(code)})"
    if job.cancel_requested:  # asked before it exited: not started again
        job_reaper.end_unfinished(job_id, JobStatus.CANCELLED, f"Cancelled; {why}.", attempt=attempt)
    elif job.attempt < settings.TRAINING_MAX_ATTEMPTS:
        with transaction.atomic():  # audited as the reaper's requeue is: an auditor sees every restart
            # A cancel committed since it was read: the job stays running, its silence then the reaper's.
            requeued = mine.filter(cancel_requested=False).update(
                status=JobStatus.QUEUED,
                pid=None,
                status_detail=f"{why}; resuming from step {job.checkpoint_step}.",
            )
            if requeued:
                job.refresh_from_db()
                audit.record(Actor.for_system("training"), "training.job_requeued", job, after=job.snapshot())
        if requeued:
            finetune.enqueue(job)
        elif mine.filter(cancel_requested=True).exists():  # a cancel committed since the job was read
            job_reaper.end_unfinished(job_id, JobStatus.CANCELLED, f"Cancelled; {why}.", attempt=attempt)
    else:
        job_reaper.end_unfinished(
            job_id,
            JobStatus.FAILED,
            # Not the log's tail: it can carry rows of the data and the node's paths, and the detail is for
            # every reader of the job (the log is for those who run the team's fine-tunes).
            f"{why} on attempt {attempt}; giving up. Its last lines are in the job's log.",
            attempt=attempt,
        )


def _beat(job_id: int, mine, attempt: int, pid: int, process: subprocess.Popen | None) -> bool:
    """One heartbeat of the watcher: whether its trainer was stopped, the job being another attempt's."""
    if not mine.update(heartbeat_at=timezone.now(), log_tail=log_tail(_log_path(job_id), 30)) and (
        FineTuneJob.objects.filter(pk=job_id)
        .filter(Q(status=JobStatus.QUEUED) | ~Q(attempt=attempt))
        .exists()
    ):
        # Requeued (this node went silent), or another attempt has the job: this trainer would only hold its
        # GPUs (and race the next attempt) until its own next write.
        logger.warning("fine-tune #%s attempt %s was taken over; stopping its trainer", job_id, attempt)
        _kill(pid, process=process)
        return True
    if mine.filter(cancel_requested=True).exists():
        _kill(pid, process=process)
        job_reaper.end_unfinished(
            job_id,
            JobStatus.CANCELLED,
            "Cancelled: the trainer's process group was stopped.",
            attempt=attempt,
        )
    return False


def _remove_work(job_id: int, attempt: int) -> None:
    """The work folder of an attempt whose trainer has exited: one killed outright (SIGKILL after the grace of
    ``_kill``, the kernel's OOM killer) leaves it on the node's disk, with the checkpoint or output it wrote."""
    for folder in (Path(settings.DATA_DIR) / "work").glob(f"{runner.work_prefix(job_id, attempt)}*"):
        shutil.rmtree(folder, ignore_errors=True)


@shared_task(name="training.reap_stale_jobs")
def reap_stale_jobs() -> int:
    moved = job_reaper.reap_stale_jobs(timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS))
    return moved + len(lost_messages.resend())  # queued ones whose message never reached their node


@shared_task(name="training.reap_stale_ingests")
def reap_stale_ingests() -> int:
    resent, given_up = ingest.reap_stale()
    return len(resent) + len(given_up)


@shared_task(name="training.ingest_dataset", acks_late=True)
def ingest_dataset(ingest_id: int) -> None:
    """Validate, split and measure an uploaded file into a dataset version (``training.ingest``)."""
    # One run per ingest: a redelivery (the broker's visibility timeout, a worker process that died) or a
    # duplicate resend finds the live run's lease and leaves the ingest, and its uploaded file, alone.
    status = DatasetIngest.objects.filter(pk=ingest_id).values_list("status", flat=True).first()
    if status is None:
        logger.warning("ingest #%s does not exist (its upload was never committed?)", ingest_id)
        return
    if status in JobStatus.finished():
        return  # a duplicate message of one already ended
    lease = ingest.lease_of(ingest_id)
    # Not waiting out a holder elsewhere: a live one renews its lease, and a dead one's silent ingest is sent
    # again by the reaper, so a duplicate need not hold a worker for a lease's expiry to find out which.
    if not lease.acquire(wait=False):
        logger.info(
            "ingest #%s is run by a live delivery (%s); this redelivery leaves it alone",
            ingest_id,
            lease.holder(),
        )
        return
    with lease.kept(), contextlib.suppress(Invalid):  # a refused file is the ingest's outcome, not an error
        ingest.run(ingest_id)


@shared_task(name="training.run_endpoint_eval", acks_late=True)
def run_endpoint_eval(run_id: int) -> None:
    """Score an endpoint on an eval set through the gateway (``training.evals.runs``); a redelivery finds
    the run claimed and leaves it alone."""
    eval_runs.execute(run_id)


@shared_task(name="training.reap_stale_eval_runs")
def reap_stale_eval_runs() -> int:
    return len(eval_runs.reap_stale(timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)))


def _merge_log_path(job_id: int) -> Path:
    return Path(settings.DATA_DIR) / "training" / f"merge-{job_id}.log"


@shared_task(name="training.merge_adapter", acks_late=True)
def merge_adapter(job_id: int) -> str | None:
    """Merge an adapter into a full version (``training.merges``): claim the job, run the merge in a child
    process as a fine-tune's trainer runs, watch it to its end. Its final status (None: a redelivery found
    the job claimed and left it alone)."""
    job = merges.claim(job_id)
    if job is None:
        return None
    began = timezone.now()
    metering.merge_started(job, began)
    env = _trainer_env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # it holds no GPU: peft merges on the CPU, billed as the node's cores
    env[orphans.PARENT_ENV] = str(os.getpid())  # it stops when this process dies (training.orphans)
    log = _merge_log_path(job_id)
    process = _start_child("training.merges.runner", job_id, log, env)
    return _watch_merge(job_id, process, log)


def _watch_merge(job_id: int, process: subprocess.Popen, log: Path) -> str:
    """Beat while the merge process runs; stop it past ``MERGE_TIMEOUT_SECONDS``; then record how it ended
    (``merges.ended``: a process that died without ending its job fails it, with the reason)."""
    started = time.monotonic()
    last_beat = started
    why = None
    try:
        while process.poll() is None:
            now = time.monotonic()
            if now - started > settings.MERGE_TIMEOUT_SECONDS:
                _kill(process.pid, process=process)
                process.wait()
                why = (
                    f"The merge process ran past {settings.MERGE_TIMEOUT_SECONDS}s "
                    "(PORTFOLIO_MERGE_TIMEOUT_SECONDS) and was stopped."
                )
                break
            if now - last_beat >= settings.TRAINING_HEARTBEAT_SECONDS:
                last_beat = now
                merges.beat(job_id)
            time.sleep(0.5)
    except BaseException:
        # A beat that failed (the database gone a moment), the task stopped: the process does not run on
        # unwatched, past its time limit. The job, no longer beaten, is the reaper's.
        _kill(process.pid, process=process)
        raise
    why = why or f"The merge process exited ({_exit_reason(process.returncode)}) without finishing the job."
    return merges.ended(job_id, time.monotonic() - started, why, log_tail(log, 30))


@shared_task(name="training.reap_stale_merges")
def reap_stale_merges() -> int:
    return len(merges.reap_stale(timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)))
