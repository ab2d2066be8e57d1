"""Fine-tuning jobs: start (audited, queued on a node of the chosen pool), cancel, and the bookkeeping the
node task and the reaper do. The training itself runs in training/runner.py, in a child process."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from functools import partial

from celery import current_app
from django.db import transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.billing import budgets
from portfolio.errors import Conflict, Invalid
from portfolio.registry import services as registry_services
from portfolio.registry.choices import Family, VersionKind, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from serving import heartbeats, scheduler
from serving.capacity import GpuHold, pool_capacity
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Endpoint, Node
from training import architectures, dataset_purge, distillation, metering, services
from training.choices import DatasetKind, EvalStatus, JobStatus, Method
from training.defaults import Hyperparameters
from training.models import DatasetVersion, EvalRun, FineTuneJob

logger = logging.getLogger(__name__)

ALLOWED_HYPERPARAMETERS = {
    "epochs",
    "learning_rate",
    "batch_size",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "max_length",
    "seed",
    "checkpoint_every",
    "early_stopping_patience",
    "lora_targets",
    "target_modules",
}
# Left out of a job's stored settings until its run chooses them (training.defaults.Hyperparameters.resolved).
AUTOMATIC_WHEN_UNSET = ("lora_r", "lora_alpha", "target_modules", "lora_targets")
# The fewest steps between two checkpoints (0: none): each one saves the weights (a full fine-tune's all of
# them) and the optimizer state, and uploads them to the store; one a step would cost more than the training.
CHECKPOINT_EVERY_MIN = 10
# Hyperparameters that are not numbers: checked by training.architectures (and against the base at start).
NAMED = {"lora_targets": architectures.check_choice, "target_modules": architectures.check_names}


def _hyperparameters(values: dict, method: str) -> dict:
    unknown = sorted(set(values) - ALLOWED_HYPERPARAMETERS)
    if unknown:
        raise Invalid(
            f"hyperparameters.{unknown[0]} is not a tunable hyperparameter "
            f"(allowed: {', '.join(sorted(ALLOWED_HYPERPARAMETERS))})."
        )
    limits = {
        "epochs": (0, 50),
        "learning_rate": (0, 1),
        "batch_size": (1, 256),
        "lora_r": (1, 256),
        "lora_alpha": (1, 1024),
        "lora_dropout": (0, 0.9),
        "max_length": (16, 131072),
        "seed": (0, 2**31),
        "checkpoint_every": (0, 100000),
        "early_stopping_patience": (0, 100),
    }
    values = {name: NAMED[name](value) if name in NAMED else value for name, value in values.items()}
    for name, value in values.items():
        if name in NAMED:
            continue
        low, high = limits[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise Invalid(f"hyperparameters.{name}: a number in {low}..{high}.")
        if name in WHOLE_NUMBERS:
            # JSON clients (and the API's schema) may send 1 as 1.0; the trainer counts with them.
            if isinstance(value, float) and not value.is_integer():
                raise Invalid(f"hyperparameters.{name}: a whole number in {low}..{high}.")
            values[name] = int(value)
    every = values.get("checkpoint_every")
    if every and every < CHECKPOINT_EVERY_MIN:
        raise Invalid(
            f"hyperparameters.checkpoint_every: 0 (no checkpoints) or {CHECKPOINT_EVERY_MIN}..100000 steps: "
            "each checkpoint saves the weights and optimizer state to the store."
        )
    hp = dict(Hyperparameters(method=method, **values).__dict__)
    return {name: value for name, value in hp.items() if value or name not in AUTOMATIC_WHEN_UNSET}


# Counts the trainer uses as such (range(epochs), slices of max_length): 1.0 is taken as 1, 0.5 refused.
WHOLE_NUMBERS = frozenset(
    {"epochs", "batch_size", "lora_r", "lora_alpha", "max_length", "seed", "checkpoint_every",
     "early_stopping_patience"}
)  # fmt: skip


# A trainer holds a whole GPU: placed as the scheduler places a one-GPU replica that claims all of it
# (utilisation 1.0), so only a GPU no replica and no other job holds any of is free for it.
WHOLE_GPU = scheduler.Estimate(
    weights_bytes=0, kv_bytes=0, overhead_bytes=0, per_gpu_bytes=1, gpus=1, ram_bytes=0, cores=0
)
WHOLE_GPU_ARGS = {"gpu_memory_utilization": 1.0}


def gpu_holder(job_id: int) -> str:
    """The name a job's GPU holds go by in serving's capacity count."""
    return f"fine-tune #{job_id}"


def gpu_holds(nodes: list[Node]) -> Iterator[GpuHold]:
    """A fine-tune job holds its GPUs whole while queued or running: none of them is free for a replica
    (registered with serving's ``GPU_HOLDERS`` in ``TrainingConfig.ready``)."""
    jobs = FineTuneJob.objects.holding_gpus().filter(node__in=nodes).values("pk", "node_id", "gpu_indices")
    for job in jobs:
        for index in job["gpu_indices"]:
            yield GpuHold(gpu_holder(job["pk"]), job["node_id"], index)


def placement(pool: ComputePool, *, job: FineTuneJob | None = None) -> tuple[Node, list[int]]:
    """The node a job runs on (the least busy ready one) and, on a GPU pool, the free GPU it claims there;
    ``job``'s own claim (a job being moved) does not count against it."""
    ready = pool.nodes.filter(state=NodeState.READY, heartbeat_at__gte=heartbeats.silent_before())
    nodes = list(ready.order_by("name"))
    if not nodes:
        raise Conflict(
            f"No ready node in pool {pool.name} to run the job (nodes lost, cordoned or none joined)."
        )
    running = FineTuneJob.objects.filter(status=JobStatus.RUNNING, node__in=nodes)
    if job is not None:
        running = running.exclude(pk=job.pk)
    busy = Counter(running.values_list("node_id", flat=True))
    if pool.kind != PoolKind.GPU:
        return min(nodes, key=lambda n: (busy[n.pk], n.name)), []
    # One claim at a time per pool (replica placement takes the same lock): no GPU is taken twice.
    ComputePool.objects.select_for_update().filter(pk=pool.pk).first()
    by_name = {node.name: node for node in nodes}
    exclude = {gpu_holder(job.pk)} if job is not None else set()
    capacity = [free for free in pool_capacity(pool, exclude_holders=exclude) if free.name in by_name]
    try:
        placement = scheduler.place(
            WHOLE_GPU,
            capacity,
            pool_kind=PoolKind.GPU,
            args=WHOLE_GPU_ARGS,
            avoid={node.name for node in nodes if busy[node.pk]},
        )
    except scheduler.Unschedulable:
        gpus = sum(len(free.gpus) for free in capacity)
        why = (
            "its ready nodes report no GPUs"
            if not gpus
            else f"all {gpus} GPU(s) of its ready nodes are in use by replicas or other training jobs"
        )
        raise Conflict(f"No free GPU on {pool.name}: {why}.", code="no_free_gpu") from None
    return by_name[placement.node], placement.gpu_indices


@transaction.atomic
def start_job(
    *,
    actor: Actor,
    base_version: ModelVersion,
    dataset_version: DatasetVersion,
    pool: ComputePool,
    method: str = Method.LORA,
    hyperparameters: dict | None = None,
    target_model: Model | None = None,
) -> FineTuneJob:
    base_version = gate.get_visible(actor, ModelVersion, pk=base_version.pk)
    # Under a lock archive_version's waits for: the base is not archived between this check and the job's row.
    # A no-key lock: an ingest recording a version measured with the base checks its key at commit (a full
    # lock, held while this waited for the audit chain that ingest held, deadlocked the two).
    base_version = ModelVersion.objects.select_for_update(no_key=True).get(pk=base_version.pk)
    dataset_version = gate.get_visible(actor, DatasetVersion, pk=dataset_version.pk)
    team = dataset_version.dataset.owner_team
    gate.require(actor, "training.run", team)
    dataset_version = dataset_purge.ready(dataset_version)  # not archived until the job's row is in
    pool = gate.get_visible(actor, ComputePool, pk=pool.pk)
    if method not in Method.values:
        raise Invalid(f"method: one of {', '.join(Method.values)}.")
    if method == Method.QLORA and pool.kind != PoolKind.GPU:
        raise Invalid(
            "method: QLoRA needs a GPU pool (its 4-bit kernels are CUDA-only); use LoRA on CPU pools."
        )
    if base_version.kind != VersionKind.BASE or base_version.status != VersionStatus.READY:
        raise Invalid("base_version: fine-tune a ready base version.")
    if base_version.family == Family.SPEECH:
        # Its training examples are audio with transcripts; datasets hold chat or text rows.
        raise Invalid(
            f"base_version: {base_version.label} is a speech model (encoder-decoder over audio); "
            "datasets hold text, so it cannot be fine-tuned here. Fine-tune a text or vision-language base."
        )
    if dataset_version.shape == DatasetKind.CHAT:
        _require_chat_template(base_version, f"{dataset_version} holds conversations")
    target = target_model or base_version.model
    gate.require(actor, "model.register", target)
    services.require_job_inputs(team=team, base_version=base_version, pool=pool, target_model=target)
    budgets.check_can_spend(team)  # the job's compute is the team's: not past a hard-limited budget
    chosen = _hyperparameters(hyperparameters or {}, method)
    if base_version.context_length and chosen.get("max_length", 0) > base_version.context_length:
        # Rows that long would index past the base's position embeddings: the run would fail once loaded.
        limit = f"{base_version.label}'s context, {base_version.context_length:,} tokens"
        raise Invalid(
            f"hyperparameters.max_length: more than {limit}.", fields={"max_length": [f"At most {limit}."]}
        )
    # A layer the base does not have would fail the run once it loaded the base: refused here instead.
    architectures.check_targets(base_version, chosen, method)
    node, gpu_indices = placement(pool)
    job = FineTuneJob.objects.create(
        owner_team=team,
        base_version=base_version,
        dataset_version=dataset_version,
        target_model=target,
        method=method,
        hyperparameters=chosen,
        pool=pool,
        node=node,
        gpu_indices=gpu_indices,
        created_by=actor.user,
    )
    audit.record(actor, "training.job_start", job, after=job.snapshot())
    transaction.on_commit(lambda: enqueue(job))
    return job


def _require_chat_template(base_version: ModelVersion, why: str) -> None:
    """A base with no chat template cannot be trained on conversations: the trainer renders every one with
    it, and the run failed once it had loaded the base (after the teacher's calls, for a distillation)."""
    if not base_version.has_chat_template:
        raise Invalid(
            f"base_version: {base_version.label} has no chat template, and {why}. Set one on the version's "
            "page (a new version), or train on prompt/completion or classification rows."
        )


MAX_DISTILLATION_PROMPTS = 10_000


@transaction.atomic
def start_distillation(
    *,
    actor: Actor,
    teacher: Endpoint,
    prompts: DatasetVersion,
    student: ModelVersion,
    pool: ComputePool,
    method: str = Method.LORA,
    hyperparameters: dict | None = None,
    target_model: Model | None = None,
) -> FineTuneJob:
    """Stage one asks ``teacher`` (a deployed endpoint of the team) to answer ``prompts`` through the gateway;
    stage two fine-tunes ``student`` on the answers."""
    teacher = gate.get_visible(actor, Endpoint, pk=teacher.pk)
    gate.require(actor, "endpoint.call", teacher)
    prompts = gate.get_visible(actor, DatasetVersion, pk=prompts.pk)
    if teacher.owner_team_id != prompts.dataset.owner_team_id:
        raise Invalid("teacher: the teacher endpoint must belong to the dataset's team (it is billed to it).")
    asked = prompts.train_count + prompts.eval_count
    if asked > MAX_DISTILLATION_PROMPTS:
        # Each prompt is a billed call of the teacher, one after another, while the job holds its node.
        raise Invalid(
            f"prompts: {prompts} holds {asked:,} rows; a distillation asks the teacher at most "
            f"{MAX_DISTILLATION_PROMPTS:,}. Upload a sample of the prompts as a dataset version.",
            fields={"prompts": [f"At most {MAX_DISTILLATION_PROMPTS:,} rows."]},
        )
    student = gate.get_visible(actor, ModelVersion, pk=student.pk)
    # Checked before any teacher call is bought: the teacher's answers are conversations, whatever the prompts.
    _require_chat_template(student, "a distillation trains on the teacher's answers as conversations")
    job = start_job(
        actor=actor,
        base_version=student,
        dataset_version=prompts,
        pool=pool,
        method=method,
        hyperparameters=hyperparameters,
        target_model=target_model,
    )
    job.teacher_endpoint = teacher
    job.save(update_fields=["teacher_endpoint"])
    audit.record(actor, "training.distillation_start", job, after={**job.snapshot(), "teacher": teacher.name})
    return job


def enqueue(job: FineTuneJob) -> None:
    """Send the job to its node's queue. By the task's name: the task module builds on this one."""
    if job.node is None:
        raise Conflict(f"Fine-tune #{job.pk} has no node to run on.")
    current_app.signature("training.run_job", args=[job.pk], queue=f"node.{job.node.name}").apply_async()


@transaction.atomic
def cancel_job(*, actor: Actor, job: FineTuneJob) -> FineTuneJob:
    """Queued jobs end at once; a running one is stopped by its node (the whole process group)."""
    gate.require(actor, "training.run", job)
    job = FineTuneJob.objects.select_for_update().get(pk=job.pk)
    if job.status in JobStatus.finished():
        raise Conflict(f"The job already {job.status}.")
    if job.status == JobStatus.QUEUED:
        job.status, job.finished_at, job.status_detail = (
            JobStatus.CANCELLED,
            timezone.now(),
            f"Cancelled by {actor.label}.",
        )
        job.save(update_fields=["status", "finished_at", "status_detail"])
        # Queued again after a lost attempt, it may hold a checkpoint: deleted once the cancel commits.
        transaction.on_commit(partial(drop_checkpoint, job.pk))
        # And the teacher key a killed stage-one attempt left: ``finish`` revokes it only from running.
        distillation.revoke_teacher_keys(job)
    else:
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
    audit.record(actor, "training.job_cancel", job, after=job.snapshot())
    return job


def finish(job_id: int, status: str, detail: str = "", *, attempt: int | None = None, **fields) -> bool:
    """Compare-and-swap from running (as ``attempt``, when an attempt's trainer or watcher ends it): a job
    cancelled or taken over meanwhile is left alone. The transition and its audit row commit together: a
    job never ends without its row."""
    running = FineTuneJob.objects.filter(pk=job_id, status=JobStatus.RUNNING)
    if attempt is not None:
        running = running.filter(attempt=attempt)
    with transaction.atomic():
        updated = running.update(
            status=status, status_detail=detail[:4000], finished_at=timezone.now(), pid=None, **fields
        )
        if updated:
            job = FineTuneJob.objects.get(pk=job_id)
            assert job.finished_at is not None
            # The attempt's compute ends with it (unless its watcher or the reaper already ended it).
            metering.attempt_ended(job, job.finished_at)
            audit.record(Actor.for_system("training"), f"training.job_{status}", job, after=job.snapshot())
            distillation.revoke_teacher_keys(job)
    if updated:
        drop_checkpoint(job_id)
    return bool(updated)


def drop_checkpoint(job_id: int) -> None:
    """An ended job's checkpoint leaves the store: nothing resumes from it (a job that ended is not started
    again; a new job trains from step 0). A store that fails to delete it is logged: the job has ended."""
    from portfolio.registry.artifacts import discard_if_unused
    from portfolio.registry.stores import default_store

    ended = FineTuneJob.objects.filter(pk=job_id, status__in=JobStatus.finished())
    checkpoint = ended.values_list("checkpoint_id", flat=True).first()
    if checkpoint and ended.update(checkpoint=None):
        try:
            discard_if_unused(default_store(), checkpoint)
        except Exception:
            logger.exception(
                "job #%s: its checkpoint %s could not be deleted from the store", job_id, checkpoint
            )


@transaction.atomic
def record_eval_run(job: FineTuneJob, version: ModelVersion, metrics: dict) -> EvalRun:
    """A finished eval run of ``version`` on the job's held-out rows, audited (promotion compares them)."""
    run = EvalRun.objects.create(
        version=version,
        dataset_version=job.training_data,
        job=job,
        status=EvalStatus.SUCCEEDED,
        metrics=metrics,
        finished_at=timezone.now(),
    )
    serving = metrics.get("serving") or {}
    audit.record(
        Actor.for_system("training"),
        "training.eval_run",
        run,
        after={
            "version": version.label,
            "dataset_version": job.training_data.pk,
            "headline": run.headline,
            "latency_p50_ms": serving.get("latency_p50_ms"),
            "tokens_per_second": serving.get("tokens_per_second"),
        },
    )
    return run


def register_output(job: FineTuneJob, manifest, facts, store_uri: str, metrics: dict) -> ModelVersion | None:
    """The trained output as a version of the job's target model, made the job's output (with its metrics)
    in the same transaction, while the job's row, locked, still runs as the attempt ``job`` was read by.
    None when that attempt was taken over or the job ended meanwhile: it registers nothing."""
    with transaction.atomic():
        mine = FineTuneJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempt=job.attempt)
        if not mine.select_for_update().exists():
            return None
        if not ModelVersion.objects.shared_with_team(job.owner_team).filter(pk=job.base_version_id).exists():
            # Its owners stopped sharing it while the job trained: a full fine-tune's output is a copy of its
            # weights, an adapter useless without them (as a merge is refused, registry/merging.py).
            raise Conflict(
                f"Its base {job.base_version.label} is no longer shared with {job.owner_team.name}: the "
                "trained version is not registered."
            )
        version = _register_trained_version(job, manifest, facts, store_uri, metrics)
        # With its metrics: a later attempt (this one killed) scores and ends it without training.
        mine.update(output_version=version, metrics=metrics, heartbeat_at=timezone.now())
    return version


def _register_trained_version(
    job: FineTuneJob, manifest, facts, store_uri: str, metrics: dict
) -> ModelVersion:
    from portfolio.registry.choices import Source

    endpoint = job.teacher_endpoint
    teacher = f"- **Teacher:** endpoint `{endpoint.name}`\n" if endpoint is not None else ""
    card = (
        f"# {job.target_model.name} ({'distillation' if endpoint is not None else 'fine-tune'} #{job.pk})\n\n"
        f"{teacher}"
        f"- **Base:** {job.base_version.label}\n- **Method:** {job.get_method_display()}\n"
        f"- **Dataset:** {job.training_data.dataset.name} v{job.training_data.number} "
        f"({job.training_data.train_count} training rows, {job.training_data.eval_count} held out)\n"
        f"- **Hyperparameters:** {', '.join(f'{k}={v}' for k, v in sorted(job.hyperparameters.items()))}\n"
        f"- **Final training loss:** {metrics.get('train_loss_last')}\n- **Eval loss** (training rows held back for early stopping): {metrics.get('eval_loss')}\n"
    )
    return registry_services.register_trained_version(
        actor=Actor.for_system("training"),
        model=job.target_model,
        base_version=job.base_version,
        manifest=manifest,
        facts=facts,
        store_uri=store_uri,
        source=Source.DISTILLATION if endpoint is not None else Source.FINE_TUNE,
        source_ref=f"job:{job.pk}; dataset:{job.training_data.dataset.name}@v{job.training_data.number}",
        metrics={
            "training": metrics,
            "dataset_version": job.training_data.pk,
            "job": job.pk,
            "hyperparameters": job.hyperparameters,
            **(
                {"teacher_endpoint": endpoint.name, "prompt_dataset_version": job.dataset_version_id}
                if endpoint is not None
                else {}
            ),
        },
        model_card=card,
    )
