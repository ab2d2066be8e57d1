"""What people do with training data, with its audit row in the same transaction: create a dataset,
upload a file (stored, then ingested by a worker: ``training/ingest.py``), read a version's rows. Archiving a
version and deleting its stored files are in ``training/dataset_purge.py``.

A dataset version is made whole or not at all, by the ingest job; see ``training.ingest``.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry import services as registry
from portfolio.registry.artifacts import local_copy, mark_artifact_health
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from portfolio.registry.storage import CorruptArtifact, check_relative_path
from serving import services as serving_services
from serving.models import ComputePool
from training import splitting
from training.choices import DatasetKind, JobStatus, Split
from training.ingest import EVAL_FILE, ORIGINAL_FILE, SPLIT_FILES, TRAIN_FILE
from training.models import Dataset, DatasetIngest, DatasetVersion, dataset_name_validator


def _check_name(name: str) -> str:
    from django.core.exceptions import ValidationError

    name = name.strip().lower()
    try:
        dataset_name_validator(name)
    except ValidationError as exc:
        raise Invalid(f"name: {exc.messages[0]}", fields={"name": exc.messages}) from None
    return name


# --- Datasets --------------------------------------------------------------------------------------
MAX_DESCRIPTION = 5000  # as the form's


@transaction.atomic
def create_dataset(
    *, actor: Actor, owner_team: Team, name: str, kind: str = DatasetKind.CHAT, description: str = ""
) -> Dataset:
    gate.require(actor, "training.run", owner_team)
    name = _check_name(name)
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description: at most {MAX_DESCRIPTION:,} characters.")
    if kind not in DatasetKind.values:
        raise Invalid(f"kind: choose one of {', '.join(DatasetKind.values)}.")
    dataset = Dataset(
        name=name, owner_team=owner_team, kind=kind, description=description.strip(), created_by=actor.user
    )
    try:
        with transaction.atomic():
            dataset.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"{owner_team.name} already has a dataset named {name!r}.") from None
    audit.record(actor, "dataset.create", dataset, after=dataset.snapshot())
    return dataset


# --- What a training job of a team may use --------------------------------------------------------
def require_job_inputs(
    *, team: Team, base_version: ModelVersion, pool: ComputePool, target_model: Model
) -> None:
    """A fine-tune (or distillation) job belongs to its dataset's team, and what it uses is checked against
    that team, not only against who starts it (who may belong to several teams): the pool must be open to
    the team, the base version shared with it, and the result registered under one of the team's models
    (a model of another team would hand that team a version trained on this team's data)."""
    serving_services.require_pool_open_to(team, pool)
    serving_services.require_usable_by(team, base_version, "base_version")
    if target_model.owner_team_id != team.pk:
        raise Invalid(
            f"target_model: {target_model.name} belongs to another team; register the result under a model of "
            f"{team.name} (the dataset's team).",
            fields={"target_model": [f"Choose a model of {team.name}."]},
        )


# --- Versions: the upload (the worker side, the ingest, is in training/ingest.py) -------------------
def _save_upload(chunks: Iterable[bytes]) -> tuple[Path, int]:
    """Stream an upload into the uploads folder (shared by web and workers), refusing it past the limit."""
    folder = Path(settings.DATA_DIR) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"dataset-{uuid.uuid4().hex}.jsonl"
    written = 0
    try:
        with target.open("wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > settings.MAX_UPLOAD_BYTES:
                    raise Invalid(
                        f"file: The upload exceeds the limit of {settings.MAX_UPLOAD_BYTES:,} bytes."
                    )
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, written


def _tokenizer_version(actor: Actor, team: Team, base_version: ModelVersion | None) -> ModelVersion | None:
    """The ready version whose tokenizer measures the rows (an adapter's base): visible to the actor and
    shared with the dataset's team (the version records it, for that team's viewers to read)."""
    if base_version is None:
        return None
    version = gate.get_visible(actor, ModelVersion, pk=base_version.pk)
    serving_services.require_usable_by(team, version, "base_version")
    if version.status != VersionStatus.READY:
        raise Invalid(f"base_version: {version.label} is {version.status}; choose a ready version.")
    if version.kind == VersionKind.ADAPTER and version.base_version is not None:
        return version.base_version
    return version


def _still_ready(version: ModelVersion) -> None:
    """Under a lock ``archive_version``'s waits for: not archived between the check before the upload was saved
    and the ingest's row, which the in-use checks count from then on (``TrainingConfig.in_training``). A no-key
    lock: an ingest recording a version measured with it checks its key at commit (found by review: a full
    lock, held while this upload waited for the audit chain that ingest held, deadlocked the two)."""
    locked = ModelVersion.objects.select_for_update(no_key=True).get(pk=version.pk)
    if locked.status != VersionStatus.READY:
        raise Invalid(f"base_version: {locked.label} is {locked.status}; choose a ready version.")


def ingests_waiting(team: Team) -> int:
    """The team's dataset uploads waiting on disk for their ingest (queued or running): counted with its
    adapter archives against ``UPLOADS_PER_TEAM`` (``registry.require_upload_room``; the registry asks
    through ``UPLOADS_WAITING``)."""
    return DatasetIngest.objects.filter(
        dataset__owner_team=team, status__in=(JobStatus.QUEUED, JobStatus.RUNNING)
    ).count()


def upload_version(
    *,
    actor: Actor,
    dataset: Dataset,
    chunks: Iterable[bytes],
    filename: str,
    base_version: ModelVersion | None = None,
    eval_fraction: float = splitting.DEFAULT_EVAL_FRACTION,
    seed: int = splitting.DEFAULT_SEED,
    enqueue: bool = True,
) -> DatasetIngest:
    """Store an uploaded JSONL file and queue its ingest (``training.ingest``), which validates it and
    records it as the dataset's next version, or refuses it with its problems by line number.

    What can be told without reading the rows is refused here: permissions, the split's fraction, the
    tokenizer's version, the size, and the team's share of uploads waiting for a worker (before a byte is
    written, and again under the team's lock). ``enqueue=False`` when the caller runs the ingest itself
    (``ingest.run``), as workers that make a dataset do: that upload waits for no worker, and is not refused.
    """
    gate.require(actor, "training.run", dataset)
    if not 0 <= eval_fraction <= splitting.MAX_EVAL_FRACTION:
        raise Invalid(f"eval_fraction: Use a fraction from 0 to {splitting.MAX_EVAL_FRACTION}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= splitting.MAX_SEED:
        raise Invalid(f"seed: a whole number from 0 to {splitting.MAX_SEED}.")
    tokenizer_version = _tokenizer_version(actor, dataset.owner_team, base_version)
    if enqueue:
        with transaction.atomic():
            registry.require_upload_room(dataset.owner_team, ingests_waiting)
    path, size = _save_upload(chunks)
    try:
        with transaction.atomic():
            # The team's lock before the version's, as every taker of a team's lock (restarts, composites,
            # merges) orders them: a restart onto the tokenizer's version deadlocked with this the other way.
            if enqueue:  # counted again: another upload of the team may have been recorded meanwhile
                registry.require_upload_room(dataset.owner_team, ingests_waiting)
            if tokenizer_version is not None:
                _still_ready(tokenizer_version)
            ingest = DatasetIngest.objects.create(
                dataset=dataset,
                upload_path=str(path),
                source_filename=Path(filename or "").name[:255],
                size_bytes=size,
                eval_fraction=eval_fraction,
                split_seed=seed,
                tokenizer_version=tokenizer_version,
                created_by=actor.user,
                progress_detail="waiting for a worker",
            )
            audit.record(actor, "dataset.upload", ingest, after=ingest.snapshot())
            if enqueue:
                transaction.on_commit(lambda: enqueue_ingest(ingest.pk))
    except BaseException:
        path.unlink(missing_ok=True)  # nothing refers to it: do not leave it behind
        raise
    return ingest


def enqueue_ingest(ingest_id: int) -> None:
    """Queue the ingest's worker job. By the task's name: the task module builds on this one."""
    current_app.signature("training.ingest_dataset", args=[ingest_id]).apply_async()


# --- Reading versions (trainers, previews, downloads) ---------------------------------------------
@dataclass(frozen=True)
class DatasetFiles:
    """Local, verified paths of a version's files."""

    folder: Path
    train: Path
    eval: Path
    original: Path

    def split(self, split: str) -> Path:
        return self.train if split == Split.TRAIN else self.eval


class DamagedDataset(CorruptArtifact, Conflict):
    """A version's stored files are missing or do not match their manifest: a refusal (409 in the API), and
    still a ``CorruptArtifact`` to the callers that catch one (the version page shows it beside the rows)."""

    def __init__(self, version: DatasetVersion, damage: CorruptArtifact):
        Conflict.__init__(
            self,
            f"The stored files of {version.dataset.name} v{version.number} are damaged ({damage}); "
            "its rows cannot be read until they are stored again.",
        )
        self.path, self.reason = damage.path, damage.reason


class PurgedDataset(Conflict):
    """A version whose stored files were deleted (``training.dataset_purge``): its rows are gone for good."""

    def __init__(self, version: DatasetVersion):
        super().__init__(
            f"The stored files of {version.dataset.name} v{version.number} were deleted; "
            "its rows can no longer be read.",
            code="purged",
        )


def dataset_files(version: DatasetVersion) -> DatasetFiles:
    """A verified local copy of a version's JSONL files (trainers read them from here); cached per artifact.
    Damaged files mark the artifact corrupt, as the registry does a model's, and are refused with a 409;
    so are a purged version's (none: a job or eval run that reads it fails saying so)."""
    artifact = version.artifact
    if artifact is None:
        raise PurgedDataset(version)
    try:
        folder = local_copy(artifact.manifest(), Path(settings.ARTIFACT_CACHE) / artifact.id)
    except CorruptArtifact as exc:
        mark_artifact_health(artifact.id, [str(exc)])
        raise DamagedDataset(version, exc) from exc
    return DatasetFiles(folder, folder / TRAIN_FILE, folder / EVAL_FILE, folder / ORIGINAL_FILE)


class SplitRows(Sequence):
    """The rows of one split as a lazily read sequence, for paginators: slicing reads only that window.

    With ``page_bytes`` (a listing's pages: the API's and the version page's), a window parses its rows only
    until their lines add up to that many bytes (its first row whole, whatever its size); each row after is
    given as ``row`` None with its size in ``bytes``, so that a page of rows of up to 1 MiB each does not
    become a response of hundreds of MiB (the split's file has them whole)."""

    def __init__(self, path: Path, count: int, page_bytes: int | None = None):
        self.path = path
        self._count = count
        self.page_bytes = page_bytes

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, item):
        if isinstance(item, int):
            rows = self[item : item + 1]
            if not rows:
                raise IndexError(item)
            return rows[0]
        start, stop, _ = item.indices(self._count)
        if start >= stop:
            return []
        left = self.page_bytes
        rows = []
        with self.path.open("rb") as handle:
            skip = start
            if start >= ROW_STRIDE:  # from the nearest line whose offset is known, not from the first line
                handle.seek(_offsets(self.path)[start // ROW_STRIDE])
                skip = start % ROW_STRIDE
            for index, line in enumerate(itertools.islice(handle, skip, skip + stop - start), start + 1):
                if left is not None and len(line) > left and rows:  # a page's first row is always whole
                    rows.append({"index": index, "row": None, "bytes": len(line)})
                    left = 0  # the rows keep their order: none after a row left out is shown
                    continue
                rows.append({"index": index, "row": json.loads(line), "bytes": len(line)})
                left = None if left is None else left - len(line)
        return rows

    def at(self, positions: list[int]) -> list[dict]:
        """The rows at ``positions`` (ascending, from 0), as a slice gives them, in one pass over the file from
        the first: a sample spread over a large split, read a slice a row, re-read up to ROW_STRIDE lines for
        each (26 times the file for 2,000 rows of 20,000)."""
        wanted = [position for position in positions if 0 <= position < self._count]
        if not wanted:
            return []
        rows = []
        with self.path.open("rb") as handle:
            first = wanted[0] - wanted[0] % ROW_STRIDE
            if first:
                handle.seek(_offsets(self.path)[first // ROW_STRIDE])
            following = iter(wanted)
            target = next(following)
            for index, line in enumerate(handle, first):
                if index == target:
                    rows.append({"index": index + 1, "row": json.loads(line), "bytes": len(line)})
                    target = next(following, -1)
                    if target < 0:
                        break
        return rows


# Where every ROW_STRIDE-th line of a split file starts, per file (kept for the last 64 files a process
# read): a page far into a split of millions of rows seeks there instead of reading every line before it.
ROW_STRIDE = 1024
_OFFSETS: dict[tuple[str, int, int], list[int]] = {}


def _offsets(path: Path) -> list[int]:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    found = _OFFSETS.get(key)
    if found is None:
        found, offset = [], 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle):
                if number % ROW_STRIDE == 0:
                    found.append(offset)
                offset += len(line)
        while len(_OFFSETS) >= 64:
            _OFFSETS.pop(next(iter(_OFFSETS)))
        _OFFSETS[key] = found
    return found


# What one page of a listing of rows parses and sends at most (SplitRows).
PAGE_BYTES = 4 * 2**20


def split_rows(version: DatasetVersion, split: str, page_bytes: int | None = None) -> SplitRows:
    if split not in SPLIT_FILES:
        raise Invalid(f"split: Use {' or '.join(SPLIT_FILES)}.")
    count = version.train_count if split == Split.TRAIN else version.eval_count
    return SplitRows(dataset_files(version).split(split), count, page_bytes)


def version_file_entry(version: DatasetVersion, path: str):
    """The manifest entry of one of a version's files, or None; a purged version's are refused."""
    if version.artifact is None:
        raise PurgedDataset(version)
    try:
        return version.artifact.manifest().get(check_relative_path(path))
    except ValueError:
        return None


# An errored job's detail is its trainer's traceback (node paths, library versions); its log tail can carry
# rows of the data. As an engine's logs are only for those who run the deployment, these are only for those
# who run the team's fine-tunes (``training.run``); the other readers of the job are told it errored.
ERRORED_FOR_READERS = (
    "The job errored: a bug, not a problem of the data or settings. Its traceback is shown to those who run "
    "the team's fine-tunes."
)


def job_detail_for(actor: Actor, job) -> str:
    if job.status == JobStatus.ERRORED and not gate.can(actor, "training.run", job):
        return ERRORED_FOR_READERS
    return job.status_detail
