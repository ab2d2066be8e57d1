"""Training work: the node task that runs a job's child process and watches it; the control reaper."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
from celery import shared_task
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from serving.processes import log_tail
from training import finetune
from training.choices import JobStatus
from training.models import FineTuneJob


def _log_path(job_id: int) -> Path:
    return Path(settings.DATA_DIR) / "training" / f"job-{job_id}.log"


def _kill(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _trainer_env(job: FineTuneJob | None = None) -> dict[str, str]:
    """The trainer sees exactly this process's database, store and data folder (whatever set them), and
    of the machine's GPUs only those its job holds (none on a CPU pool)."""
    from django.db import connection

    db = connection.settings_dict
    host = db["HOST"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    url = (
        f"postgresql://{auth}@/{db['NAME']}?host={host}"
        if host.startswith("/")
        else f"postgresql://{auth}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_DATA_DIR": str(settings.DATA_DIR),
        "PORTFOLIO_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "PORTFOLIO_ARTIFACT_CACHE": str(settings.ARTIFACT_CACHE),
        "PORTFOLIO_GATEWAY_URL": settings.GATEWAY_INTERNAL_URL,
        "PYTHONUNBUFFERED": "1",
    }
    if job is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in job.gpu_indices)
        # Numbered as nvidia-smi numbers them (what the agent reports), not fastest first.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "training.runner" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


@shared_task(name="training.run_job", acks_late=True)
def run_job(job_id: int) -> None:
    """Claim a queued job, start its trainer process (own process group), and watch it to the end."""
    claimed = FineTuneJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        attempt=F("attempt") + 1,
        heartbeat_at=timezone.now(),
    )
    job = FineTuneJob.objects.get(pk=job_id)
    if claimed:
        if job.started_at is None:
            FineTuneJob.objects.filter(pk=job_id).update(started_at=timezone.now())
        log = _log_path(job_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "training.runner", str(job_id)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=_trainer_env(job),
                cwd=log.parent,
            )
        FineTuneJob.objects.filter(pk=job_id).update(pid=process.pid)
        pid = process.pid
    elif job.status == JobStatus.RUNNING and job.pid and _alive(job.pid):
        pid, process = job.pid, None  # redelivered after this worker died: adopt the running trainer
    else:
        return
    _watch(job_id, pid, process)


def _watch(job_id: int, pid: int, process: subprocess.Popen | None) -> None:
    started = time.monotonic()
    last_beat = 0.0
    while True:
        exited = process.poll() is not None if process else not _alive(pid)
        if exited:
            break
        now = time.monotonic()
        if now - last_beat >= settings.TRAINING_HEARTBEAT_SECONDS:
            last_beat = now
            FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
                heartbeat_at=timezone.now(), log_tail=log_tail(_log_path(job_id), 30)
            )
            if FineTuneJob.objects.filter(
                pk=job_id, status=JobStatus.RUNNING, cancel_requested=True
            ).exists():
                _kill(pid)
                finetune.finish(
                    job_id, JobStatus.CANCELLED, "Cancelled: the trainer's process group was stopped."
                )
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    cores = psutil.cpu_count() or 1
    gpus = len(FineTuneJob.objects.values_list("gpu_indices", flat=True).get(pk=job_id))
    FineTuneJob.objects.filter(pk=job_id).update(
        compute_seconds=F("compute_seconds") + elapsed,
        cpu_core_seconds=F("cpu_core_seconds") + elapsed * cores,
        gpu_seconds=F("gpu_seconds") + elapsed * gpus,
        log_tail=log_tail(_log_path(job_id), 30),
    )
    job = FineTuneJob.objects.get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        return  # the trainer finished (or was cancelled) and said so
    code = process.returncode if process else None
    why = f"the trainer exited ({'signal ' + str(-code) if code and code < 0 else 'code ' + str(code)})"
    if job.attempt < settings.TRAINING_MAX_ATTEMPTS:
        requeued = FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
            status=JobStatus.QUEUED,
            pid=None,
            status_detail=f"{why}; resuming from step {job.checkpoint_step}.",
        )
        if requeued:
            finetune.enqueue(job)
    else:
        finetune.finish(
            job_id, JobStatus.FAILED, f"{why} on attempt {job.attempt}; giving up.\n{job.log_tail}"
        )


@shared_task(name="training.reap_stale_jobs")
def reap_stale_jobs() -> int:
    return finetune.reap_stale_jobs(timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS))
