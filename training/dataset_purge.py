"""A dataset version's end of life: archived, then its stored files deleted (purged), as the registry does for
model versions (``registry.services.archive_version`` / ``purge_version``).

Stored files are billed every day while kept (the storage meter charges each dataset version's artifact to its
team: ``training.metering.kept_artifacts``). A purged version keeps its row (statistics, labels, lineage of the
jobs and eval runs that used it, its audit trail) with ``artifact`` set to none, which the meter skips.

Both changes need ``training.run`` on the dataset's team (its owners and engineers), as uploads do, and both
are refused while something reads the version's files: a queued or running fine-tune or distillation (its
prompts or its answers), a queued or running eval run of an eval set on it, or an upload of its dataset being
ingested (it may turn out to hold the same rows, and name this version as its outcome). The files of a task's
eval set are not deleted while it is one (``_evidence``): its leaderboard's scores rest on them, and deleting the
eval set (``catalogue.delete_eval_set``, its runs with it) lifts that. Nor are they while a distilled version
made from it keeps its files (``_derived``): it holds every prompt of this one. Each runs under a lock
of the version's row, which a fine-tune recorded meanwhile waits for (its row refers to the version's). What
starts on a purged version anyway (an eval run of an eval set on it) fails when it reads the files, saying
they were deleted (``services.dataset_files``).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry import artifacts
from training.choices import DatasetVersionStatus, JobStatus
from training.models import DatasetIngest, DatasetVersion, EndpointEvalRun, EvalSet, FineTuneJob

IN_FLIGHT = (JobStatus.QUEUED, JobStatus.RUNNING)


def _named(kind: str, pks: list[int]) -> list[str]:
    return [f"{kind} #{pk}" for pk in pks]


def in_use_reasons(version: DatasetVersion) -> list[str]:
    """What reads the version's files now, one reason each (empty: nothing does)."""
    jobs = FineTuneJob.objects.filter(
        Q(dataset_version=version) | Q(distilled_dataset_version=version), status__in=IN_FLIGHT
    ).order_by("pk")
    named = [f"{'distillation' if job.is_distillation else 'fine-tune'} #{job.pk}" for job in jobs]
    evals = EndpointEvalRun.objects.filter(eval_set__dataset_version=version, status__in=IN_FLIGHT)
    named += _named("eval run", list(evals.order_by("pk").values_list("pk", flat=True)))
    reasons = [f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} using it"] if named else []
    ingests = DatasetIngest.objects.filter(dataset_id=version.dataset_id, status__in=IN_FLIGHT)
    uploads = list(ingests.order_by("pk").values_list("pk", flat=True))
    if uploads:
        reasons.append(
            f"{'an upload' if len(uploads) == 1 else f'{len(uploads)} uploads'} of {version.dataset.name} "
            f"{'is' if len(uploads) == 1 else 'are'} being ingested (its rows may be this version's)"
        )
    return reasons


def _evidence(version: DatasetVersion) -> list[str]:
    """Why the files of a task's eval set stay: its leaderboard's scores were measured on them, and its
    rollouts' judge samples them, until the eval set is deleted (with its runs). Archiving is allowed: new
    eval runs are refused on it, and the judge goes on sampling it while it is the task's newest eval set."""
    tasks = sorted(set(EvalSet.objects.filter(dataset_version=version).values_list("task__name", flat=True)))
    if not tasks:
        return []
    return [
        f"it is an eval set of the task{'s' if len(tasks) > 1 else ''} {', '.join(tasks)}, whose scores rest on it"
    ]


def _derived(version: DatasetVersion) -> list[str]:
    """Why the files stay while a distillation's answers keep theirs: each such version holds every prompt
    of this one (``distillation.record_answers``), so deleting only these would leave its rows readable,
    downloadable and trainable there. Its owners purge those first."""
    made = FineTuneJob.objects.filter(dataset_version=version, distilled_dataset_version__isnull=False)
    copies = (
        DatasetVersion.objects.filter(pk__in=made.values("distilled_dataset_version"), artifact__isnull=False)
        .select_related("dataset")
        .order_by("pk")
    )
    labels = [copy.label for copy in copies]
    if not labels:
        return []
    which = "it" if len(labels) == 1 else "them"
    return [
        f"its rows are copied in {', '.join(labels)} (distilled from it): archive {which} and delete "
        f"{'its' if len(labels) == 1 else 'their'} stored files first"
    ]


def ready(version: DatasetVersion, field: str = "dataset_version") -> DatasetVersion:
    """``version`` if it is ready, locked (FOR NO KEY UPDATE) until the caller's transaction ends, so that
    archiving it waits for what the caller records; an archived or purged one is refused (a job or eval run
    started on it read files about to go, or gone, and failed when it ran)."""
    locked = (
        DatasetVersion.objects.select_for_update(no_key=True, of=("self",))
        .select_related("dataset")
        .get(pk=version.pk)
    )
    if locked.status != DatasetVersionStatus.READY or locked.artifact_id is None:
        gone = " and its stored files deleted" if locked.artifact_id is None else ""
        message = f"{locked.label} is archived{gone}; choose a ready version."
        raise Invalid(f"{field}: {message}", fields={field: [message]})
    return locked


def _locked(version: DatasetVersion) -> DatasetVersion:
    return (
        DatasetVersion.objects.select_for_update(of=("self",))
        .select_related("dataset__owner_team")
        .get(pk=version.pk)
    )


@transaction.atomic
def archive_version(*, actor: Actor, version: DatasetVersion) -> DatasetVersion:
    """ready -> archived: kept, listed and readable, and now allowed to have its stored files deleted."""
    gate.require(actor, "training.run", version.dataset)
    version = _locked(version)
    if version.status == DatasetVersionStatus.ARCHIVED:
        raise Conflict(f"{version.label} is archived already.")
    reasons = in_use_reasons(version)
    if reasons:
        raise Conflict(f"{version.label} cannot be archived: {'; '.join(reasons)}.")
    before = version.snapshot()
    version.status = DatasetVersionStatus.ARCHIVED
    version.save(update_fields=["status"])
    audit.record(actor, "dataset_version.archive", version, before=before, after=version.snapshot())
    return version


@transaction.atomic
def purge_version(*, actor: Actor, version: DatasetVersion) -> DatasetVersion:
    """Delete the stored files of an archived version: the version stays listed without files. Whoever may
    archive it may purge it, under the same lock and refusals; files another artifact holds stay
    (``artifacts.discard_if_unused``)."""
    gate.require(actor, "training.run", version.dataset)
    version = _locked(version)
    # Archived, it was not in use then; checked again, in case something took it up since.
    reasons = in_use_reasons(version) + _evidence(version) + _derived(version)
    before = artifacts.purge_files(version, archived=DatasetVersionStatus.ARCHIVED, reasons=reasons)
    audit.record(actor, "dataset_version.purge", version, before=before, after=version.snapshot())
    return version
