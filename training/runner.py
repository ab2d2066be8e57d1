"""One fine-tune job, in its own process (``python -m training.runner JOB_ID``), started by the node task.

It writes its own progress, heartbeat and final state to the database, so it finishes correctly even if
the Celery worker that started it dies; the worker's task only watches it, cancels it, and handles a crash.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path


def work_prefix(job_id: int, attempt: int) -> str:
    """How an attempt's work folder (under ``DATA_DIR/work``) is named: its watcher removes what a killed
    trainer left there, and only that (another attempt of the job may be running on this node)."""
    return f"train-{job_id}-{attempt}-"


class Replaced(Exception):
    """This attempt's job no longer runs as it: a later attempt took it over (its node went silent, say),
    or the job ended meanwhile. The attempt stops; what is left of the job is the other's."""


def _write(jobs, **fields) -> None:
    """Update the running attempt's job row (``jobs``); stop the attempt once no row is its own any more."""
    if not jobs.update(**fields):
        raise Replaced()


def _stop(signum, frame) -> None:
    # Unwinds like an exception: the work folder is removed on the way out. Python's default would not.
    sys.exit(128 + signum)


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _downsample(points: list, limit: int = 500) -> list:
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    return [points[int(i * stride)] for i in range(limit - 1)] + [points[-1]]


def _store_checkpoint(
    store,
    jobs,
    attempt: int,
    path: Path,
    step: int,
    owner: str = "a checkpoint",
    progress: dict | None = None,
) -> str:
    """Store a checkpoint and make it the running attempt's; the one it supersedes is deleted from the store,
    since a resume only ever starts from the last (each holds the adapter and the optimizer's state).
    ``progress`` (the loss curves up to ``step``) is written with it: a resume keeps the points up to its
    checkpoint's step, which a progress write held back by its once-a-second pace would otherwise lack."""
    from django.db import transaction

    from portfolio.registry import blobclaims
    from portfolio.registry.artifacts import discard_if_unused
    from portfolio.registry.models import Artifact
    from portfolio.registry.pending_writes import PendingWrites
    from portfolio.registry.storage import store_directory

    log = PendingWrites(f"{owner} at step {step}")  # what a trainer killed while storing wrote: the sweep's
    mine = jobs.filter(attempt=attempt)  # a later attempt may be resuming from the previous one
    try:
        with blobclaims.registering():  # what it finds stored stays there until the artifact is recorded
            manifest = store_directory(store, path, before_write=log)
            # Recorded and made the attempt's at once: a trainer killed between the two would leave a
            # recorded checkpoint that nothing refers to, which the sweep keeps as it keeps every artifact.
            with transaction.atomic():
                artifact = Artifact.objects.record(manifest, store.uri(manifest.artifact_id), verified=False)
                previous = mine.values_list("checkpoint_id", flat=True).first()
                made_mine = mine.update(checkpoint=artifact, checkpoint_step=step, **(progress or {}))
    except BaseException:
        log.discard(store)
        raise
    log.recorded()
    # The one it supersedes; or, not this attempt's job any more (taken over, cancelled), the one just stored.
    garbage = (previous if previous != artifact.id else None) if made_mine else artifact.id
    if garbage:  # one still referred to is kept by discard_if_unused
        try:
            discard_if_unused(store, garbage)
        except Exception:  # a store's hiccup leaves garbage behind, never fails the training
            traceback.print_exc()
    return artifact.id


def _score(
    job, version, base_dir: Path, output: Path, eval_rows: list[dict], accelerator, jobs
) -> dict | None:
    """The held-out split scored for the new version and (once per dataset version) for its base; each also
    timed on a serving replica when the version is deployed (else the run says so). A run an earlier
    attempt recorded is not scored again."""
    from django.utils import timezone

    from portfolio.registry.choices import VersionKind
    from training import finetune
    from training.evaluation import score
    from training.lora import inference_loading
    from training.models import EvalRun
    from training.serving_speed import serving_speed

    if not eval_rows:
        return None
    scoring = inference_loading(accelerator)
    recorded = EvalRun.objects.filter(dataset_version=job.training_data, status="succeeded")
    if not recorded.filter(version=job.base_version).exists():
        base_metrics = score(base_dir=base_dir, adapter_dir=None, rows=eval_rows, loading=scoring)
        base_metrics["serving"] = serving_speed(job.base_version, eval_rows, job.owner_team)
        finetune.record_eval_run(job, job.base_version, base_metrics)
    _write(jobs, heartbeat_at=timezone.now())
    earlier = recorded.filter(version=version, job=job).first()
    if earlier is not None:
        return earlier.metrics
    adapter_dir = output if version.kind == VersionKind.ADAPTER else None
    tuned = score(
        base_dir=base_dir if adapter_dir else output, adapter_dir=adapter_dir, rows=eval_rows, loading=scoring
    )
    tuned["serving"] = serving_speed(version, eval_rows, job.owner_team)
    finetune.record_eval_run(job, version, tuned)
    return tuned


def run(job_id: int) -> int:
    from django.conf import settings
    from django.db.models import F
    from django.utils import timezone

    from portfolio.errors import DomainError
    from portfolio.registry import blobclaims
    from portfolio.registry.artifacts import materialize_version
    from portfolio.registry.inspection import inspect_directory
    from portfolio.registry.pending_writes import PendingWrites
    from portfolio.registry.storage import materialize, store_directory
    from portfolio.registry.stores import default_store
    from training import finetune
    from training.choices import JobStatus
    from training.defaults import Hyperparameters, architecture_of
    from training.lora import Accelerator, Cancelled, Progress, loading_for, train
    from training.models import FineTuneJob
    from training.services import dataset_files
    from training.validation_split import early_stopping_rows

    job = FineTuneJob.objects.select_related(
        "base_version", "dataset_version__dataset", "target_model", "teacher_endpoint", "output_version"
    ).get(pk=job_id)
    # Every write of this process is this attempt's: one taken over while it still runs changes nothing.
    jobs = FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, attempt=job.attempt)
    store = default_store()
    try:
        # Before anything is asked or loaded: a job this process cannot run as asked fails at once.
        accelerator = Accelerator.detect()
        loading = loading_for(job.method, accelerator)
        where = f" ({accelerator.device_name})" if accelerator.device_name else ""
        print(f"attempt {job.attempt}: {job.method} on {loading.describe()}{where}", flush=True)
        if job.is_distillation and job.distilled_dataset_version is None:
            from training import distillation

            distillation.refuse_asking_again(job)  # an earlier attempt asked, and its answers were lost
            prompts = dataset_files(job.dataset_version)

            def asked(done: int, total: int) -> None:
                detail = f"Stage 1: {job.teacher_endpoint.name} answered {done}/{total} prompts."
                _write(jobs, heartbeat_at=timezone.now(), status_detail=detail)
                # Each prompt is a billed call: a cancel stops them here, watched by its node's task or not.
                if FineTuneJob.objects.filter(pk=job_id, cancel_requested=True).exists():
                    raise Cancelled()

            answered = distillation.ask_teacher(
                job, _rows(prompts.train) + _rows(prompts.eval), on_progress=asked
            )
            job.distilled_dataset_version = distillation.record_answers(job, answered)
            _write(
                jobs,
                distilled_dataset_version=job.distilled_dataset_version,
                status_detail="Stage 2: training.",
            )
        files = dataset_files(job.training_data)
        train_rows, eval_rows = _rows(files.train), _rows(files.eval)
        base_dir = materialize_version(job.base_version)
        # The job's method, also over hyperparameters stored before QLoRA was told apart from LoRA.
        wanted = Hyperparameters(**{**job.hyperparameters, "method": job.method})
        # Early stopping measures on training rows held back, never on the eval split that scores the job
        # (the adapter it keeps would be chosen on them); by the job's seed, the same rows on a resume.
        fit_rows, stop_rows = early_stopping_rows(train_rows, wanted.seed, wanted.early_stopping_patience)
        hp = wanted.resolved(len(fit_rows), architecture_of(base_dir))
        _write(jobs, hyperparameters=dict(hp.__dict__), heartbeat_at=timezone.now())
        resume_dir, resume_step = None, 0
        if job.checkpoint_id and job.output_version_id is None:
            resume_dir = materialize(
                store, job.checkpoint.manifest(), Path(settings.ARTIFACT_CACHE) / job.checkpoint_id
            )
            resume_step = job.checkpoint_step
            print(f"attempt {job.attempt}: resuming from the checkpoint of step {resume_step}", flush=True)
        # Steps after the checkpoint are trained again: their points of the lost attempt are dropped.
        losses = [point for point in job.loss_curve if point[0] <= resume_step]
        evals = [point for point in job.eval_curve if point[0] <= resume_step]
        last_write = [0.0]
        cancel = [False]

        def on_progress(p: Progress) -> None:
            print(
                f"step {p.step}/{p.total_steps} loss {p.loss:.4f}"
                + (f" eval loss {p.eval_loss:.4f}" if p.eval_loss is not None else "")
                + f" ({p.tokens_per_second:.0f} tokens/s)",
                flush=True,
            )
            losses.append([p.step, round(p.loss, 5)])
            if p.eval_loss is not None:
                evals.append([p.step, round(p.eval_loss, 5)])
            now = time.monotonic()
            if now - last_write[0] >= 1.0 or p.eval_loss is not None or p.step == p.total_steps:
                last_write[0] = now
                _write(
                    jobs,
                    step=p.step,
                    total_steps=p.total_steps,
                    tokens_per_second=round(p.tokens_per_second, 1),
                    loss_curve=_downsample(losses),
                    eval_curve=evals,
                    heartbeat_at=timezone.now(),
                )
                cancel[0] = FineTuneJob.objects.filter(pk=job_id, cancel_requested=True).exists()

        def on_checkpoint(path: Path, step: int) -> None:
            artifact_id = _store_checkpoint(
                store,
                jobs,
                job.attempt,
                path,
                step,
                f"the checkpoint of fine-tune #{job_id}, attempt {job.attempt},",
                progress={"step": step, "loss_curve": _downsample(losses), "eval_curve": evals},
            )
            print(f"checkpoint of step {step} stored ({artifact_id[:12]})", flush=True)

        (Path(settings.DATA_DIR) / "work").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            dir=Path(settings.DATA_DIR) / "work", prefix=work_prefix(job_id, job.attempt)
        ) as work:
            if job.output_version_id is not None:
                # An earlier attempt registered its version and was killed before the job ended: the
                # version stands; what is left is scoring it (what that attempt had not) and the end.
                version = job.output_version
                output = materialize_version(version)
                metrics = dict(job.metrics)
                print(f"attempt {job.attempt}: {version.label} was registered before; scoring it", flush=True)
            else:
                output = Path(work) / "output"
                print(
                    f"training on {len(fit_rows)} rows; early stopping measures on {len(stop_rows)} "
                    "training rows held back",
                    flush=True,
                )
                metrics = train(
                    base_dir=base_dir,
                    output_dir=output,
                    train_rows=fit_rows,
                    eval_rows=stop_rows,
                    hp=hp,
                    on_progress=on_progress,
                    on_checkpoint=on_checkpoint,
                    resume_dir=resume_dir,
                    resume_step=resume_step,
                    should_stop=lambda: cancel[0],
                    loading=loading,
                )
                metrics["rows"] = {"trained": len(fit_rows), "early_stopping": len(stop_rows)}
                facts = inspect_directory(output)
                # What a trainer killed while storing wrote is the sweep's (registry/pending_writes.py).
                log = PendingWrites(f"fine-tune #{job_id}, attempt {job.attempt}")
                try:
                    with blobclaims.registering():  # what it finds stored stays until the version is recorded
                        manifest = store_directory(store, output, before_write=log)
                        version = finetune.register_output(
                            job, manifest, facts, store.uri(manifest.artifact_id), metrics
                        )
                except BaseException:  # nothing recorded: what it stored is nobody's (once unclaimed)
                    log.discard(store)
                    raise
                if version is None:  # taken over meanwhile: likewise
                    log.discard(store)
                    raise Replaced()
                log.recorded()
            detail = f"Registered {version.label}."
            try:
                scored = _score(job, version, base_dir, output, eval_rows, accelerator, jobs)
            except Replaced:
                raise
            except Exception as exc:  # the version stands and is usable; its scores are what is missing
                traceback.print_exc()
                detail += f" Scoring its held-out rows failed ({exc.__class__.__name__}: {str(exc)[:300]})."
            else:
                if scored is not None:
                    metrics["eval"] = scored
        finetune.finish(
            job_id,
            JobStatus.SUCCEEDED,
            detail,
            attempt=job.attempt,
            metrics=metrics,
            step=F("total_steps"),
        )
        return 0
    except Replaced:
        print(f"attempt {job.attempt}: the job no longer runs as this attempt; stopping", flush=True)
        return 4
    except Cancelled:
        stage = (
            "asking the teacher"
            if job.is_distillation and job.distilled_dataset_version is None
            else "training"
        )
        finetune.finish(job_id, JobStatus.CANCELLED, f"Cancelled while {stage}.", attempt=job.attempt)
        return 3
    except DomainError as exc:  # a refusal said to people (the base withdrawn while it trained)
        finetune.finish(job_id, JobStatus.FAILED, exc.message, attempt=job.attempt)
        return 2
    except (ValueError, KeyError) as exc:
        finetune.finish(job_id, JobStatus.FAILED, f"{exc.__class__.__name__}: {exc}", attempt=job.attempt)
        return 2
    except Exception:
        finetune.finish(job_id, JobStatus.ERRORED, traceback.format_exc()[-4000:], attempt=job.attempt)
        return 1


def main() -> None:
    # A cancelled job's process group is sent SIGTERM (``training.tasks._kill``), then SIGKILL after a grace.
    signal.signal(signal.SIGTERM, _stop)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    import django

    django.setup()
    sys.exit(run(int(sys.argv[1])))


if __name__ == "__main__":
    main()
