"""Every change to training data goes through here, with its audit row in the same transaction.

A dataset version is made whole or not at all: the upload is streamed to a private work folder,
validated line by line, split, measured and written as normalized ``train.jsonl`` / ``eval.jsonl``
next to the ``original.jsonl``, stored in the content-addressed artifact store, and only then recorded.
Any refusal leaves no version, no artifact row and no work files behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid
from portfolio.registry.choices import Health, VersionKind, VersionStatus
from portfolio.registry.hashing import Manifest
from portfolio.registry.models import Artifact, Model, ModelVersion
from portfolio.registry.storage import check_relative_path, materialize, store_directory
from portfolio.registry.stores import default_store
from serving import services as serving_services
from serving.models import ComputePool
from training import splitting, tokens, validation
from training.choices import DatasetKind, Split
from training.models import Dataset, DatasetVersion, dataset_name_validator

TRAIN_FILE, EVAL_FILE, ORIGINAL_FILE = "train.jsonl", "eval.jsonl", "original.jsonl"
SPLIT_FILES = {Split.TRAIN: TRAIN_FILE, Split.EVAL: EVAL_FILE}


class DatasetInvalid(Invalid):
    """An upload with line-numbered problems; ``report`` has them all (the first 50) with their counts."""

    code = "invalid_dataset"

    def __init__(self, report: validation.Report):
        message = f"file: {report.summary()}. No version was created."
        super().__init__(message, fields={"file": [str(error) for error in report.errors]})
        self.report = report


def _check_name(name: str) -> str:
    from django.core.exceptions import ValidationError

    name = name.strip().lower()
    try:
        dataset_name_validator(name)
    except ValidationError as exc:
        raise Invalid(f"name: {exc.messages[0]}", fields={"name": exc.messages}) from None
    return name


# --- Datasets --------------------------------------------------------------------------------------
@transaction.atomic
def create_dataset(
    *, actor: Actor, owner_team: Team, name: str, kind: str = DatasetKind.CHAT, description: str = ""
) -> Dataset:
    gate.require(actor, "training.run", owner_team)
    name = _check_name(name)
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


# --- Versions --------------------------------------------------------------------------------------
def _save_upload(chunks: Iterable[bytes], target: Path) -> int:
    written = 0
    with target.open("wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > settings.MAX_UPLOAD_BYTES:
                raise Invalid(f"file: The upload exceeds the limit of {settings.MAX_UPLOAD_BYTES:,} bytes.")
            out.write(chunk)
    return written


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


@dataclass
class _Written:
    train: int
    eval: int
    stats: dict
    labels: list[dict]


def _write_splits(
    report: validation.Report,
    normalized: Path,
    line_numbers: array,
    splitter: splitting.Splitter,
    measure: tokens.Measure,
    folder: Path,
) -> _Written:
    """Second pass over the normalized rows: measure them, send each to train or eval."""
    counts = {Split.TRAIN: 0, Split.EVAL: 0}
    by_label: dict[str, dict[str, int]] = {}
    values: array = array("I")
    over_lines: list[int] = []
    over = 0
    limit = measure.context_length if measure.tokenizer is not None else None
    shape = report.shape or DatasetKind.CHAT
    with (
        normalized.open("rb") as source,
        (folder / TRAIN_FILE).open("wb") as train,
        (folder / EVAL_FILE).open("wb") as evaluation,
    ):
        index = 0
        while batch := list(itertools.islice(source, tokens.BATCH)):
            rows = [json.loads(line) for line in batch]
            for line, row, length in zip(batch, rows, tokens.lengths(rows, shape, measure), strict=True):
                group = row.get("label", "")
                split = Split.EVAL if splitter.is_eval(group, line.rstrip(b"\n")) else Split.TRAIN
                (evaluation if split == Split.EVAL else train).write(line)
                counts[split] += 1
                if shape == DatasetKind.CLASSIFICATION:
                    by_label.setdefault(group, {Split.TRAIN: 0, Split.EVAL: 0})[split] += 1
                values.append(length)
                if limit and length > limit:
                    over += 1
                    if len(over_lines) < tokens.MAX_FLAGGED:
                        over_lines.append(line_numbers[index])
                index += 1
    stats = {
        "lengths": tokens.summarize(values, measure, shape, over_lines, over),
        "lines": report.lines,
        "empty_lines": report.empty_lines,
        "empty_line_numbers": report.empty_line_numbers,
        "duplicates": report.duplicates,
        "duplicate_lines": [list(pair) for pair in report.duplicate_lines],
    }
    labels = [
        {
            "label": label,
            "count": n,
            "train": by_label[label][Split.TRAIN],
            "eval": by_label[label][Split.EVAL],
        }
        for label, n in sorted(report.labels.items(), key=lambda item: (-item[1], item[0]))
    ]
    return _Written(counts[Split.TRAIN], counts[Split.EVAL], stats, labels)


def _next_number(dataset: Dataset) -> int:
    last = dataset.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


def upload_version(
    *,
    actor: Actor,
    dataset: Dataset,
    chunks: Iterable[bytes],
    filename: str,
    base_version: ModelVersion | None = None,
    eval_fraction: float = splitting.DEFAULT_EVAL_FRACTION,
    seed: int = splitting.DEFAULT_SEED,
) -> tuple[DatasetVersion, bool]:
    """Validate an uploaded JSONL file and record it as the dataset's next version.

    Returns ``(version, created)``: uploading rows identical to an existing version's (after
    normalization) returns that version with ``created`` False. A file with any problem raises
    ``DatasetInvalid`` (an ``Invalid``) listing them by line number; nothing is kept.
    """
    gate.require(actor, "training.run", dataset)
    if not 0 <= eval_fraction <= splitting.MAX_EVAL_FRACTION:
        raise Invalid(f"eval_fraction: Use a fraction from 0 to {splitting.MAX_EVAL_FRACTION}.")
    tokenizer_version = _tokenizer_version(actor, dataset.owner_team, base_version)
    work_root = Path(settings.DATA_DIR) / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=work_root, prefix="dataset-upload-"))
    try:
        files = workdir / "files"
        files.mkdir()
        size = _save_upload(chunks, files / ORIGINAL_FILE)
        report = validation.Report()
        splitter = splitting.Splitter(seed, eval_fraction)
        line_numbers: array = array("I")
        digest = hashlib.sha256()  # of the normalized rows: the version's content hash
        normalized = workdir / "normalized.jsonl"
        with (files / ORIGINAL_FILE).open("rb") as source, normalized.open("wb") as out:
            for row in validation.scan(source, report, shape=dataset.kind):
                out.write(row.canonical + b"\n")
                digest.update(row.canonical + b"\n")
                splitter.add(row.label, row.canonical)
                line_numbers.append(row.line)
        if not report.ok:
            raise DatasetInvalid(report)
        if report.rows == 0:
            raise Invalid("file: The file holds no rows (only empty lines, or nothing).")
        content_sha256 = digest.hexdigest()
        existing = dataset.versions.filter(content_sha256=content_sha256).first()
        if existing is not None:
            return existing, False
        splitter.finish()
        try:
            measure = tokens.measure_for(tokenizer_version)
        except tokens.TokenizerUnavailable as exc:
            raise Invalid(f"base_version: {exc}") from None
        written = _write_splits(report, normalized, line_numbers, splitter, measure, files)
        normalized.unlink()
        store = default_store()
        manifest = store_directory(store, files)
        return _record_version(
            actor=actor,
            dataset=dataset,
            manifest=manifest,
            store_uri=store.uri(manifest.artifact_id),
            content_sha256=content_sha256,
            written=written,
            report=report,
            eval_fraction=eval_fraction,
            seed=seed,
            tokenizer_version=tokenizer_version,
            context_length=measure.context_length if measure.tokenizer is not None else None,
            filename=filename,
            size=size,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _record_version(
    *,
    actor: Actor,
    dataset: Dataset,
    manifest: Manifest,
    store_uri: str,
    content_sha256: str,
    written: _Written,
    report: validation.Report,
    eval_fraction: float,
    seed: int,
    tokenizer_version: ModelVersion | None,
    context_length: int | None,
    filename: str,
    size: int,
) -> tuple[DatasetVersion, bool]:
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset.pk).first()  # serialise numbering per dataset
        existing = dataset.versions.filter(content_sha256=content_sha256).first()
        if existing is not None:  # the same rows arrived from another upload meanwhile
            return existing, False
        artifact, _ = Artifact.objects.get_or_create(
            id=manifest.artifact_id,
            defaults={
                "store_uri": store_uri,
                "size_bytes": manifest.total_size,
                "file_count": len(manifest.files),
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
                "health": Health.OK,
                "verified_at": timezone.now(),
            },
        )
        version = DatasetVersion.objects.create(
            dataset=dataset,
            number=_next_number(dataset),
            shape=report.shape or dataset.kind,
            artifact=artifact,
            content_sha256=content_sha256,
            row_count=report.rows,
            train_count=written.train,
            eval_count=written.eval,
            eval_fraction=eval_fraction,
            split_seed=seed,
            stats=written.stats,
            labels=written.labels,
            tokenizer_version=tokenizer_version,
            context_length=context_length,
            source_filename=Path(filename or "").name[:255],
            size_bytes=size,
            created_by=actor.user,
        )
        audit.record(actor, "dataset_version.create", version, after=version.snapshot())
    return version, True


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


def dataset_files(version: DatasetVersion) -> DatasetFiles:
    """A verified local copy of a version's JSONL files (trainers read them from here); cached per artifact."""
    folder = materialize(
        default_store(), version.artifact.manifest(), Path(settings.ARTIFACT_CACHE) / version.artifact_id
    )
    return DatasetFiles(folder, folder / TRAIN_FILE, folder / EVAL_FILE, folder / ORIGINAL_FILE)


class SplitRows(Sequence):
    """The rows of one split as a lazily read sequence, for paginators: slicing reads only that window."""

    def __init__(self, path: Path, count: int):
        self.path = path
        self._count = count

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
        with self.path.open("rb") as handle:
            window = itertools.islice(handle, start, stop)
            return [{"index": start + i + 1, "row": json.loads(line)} for i, line in enumerate(window)]


def split_rows(version: DatasetVersion, split: str) -> SplitRows:
    if split not in SPLIT_FILES:
        raise Invalid(f"split: Use {' or '.join(SPLIT_FILES)}.")
    count = version.train_count if split == Split.TRAIN else version.eval_count
    return SplitRows(dataset_files(version).split(split), count)


def version_file_entry(version: DatasetVersion, path: str):
    """The manifest entry of one of a version's files, or None."""
    try:
        return version.artifact.manifest().get(check_relative_path(path))
    except ValueError:
        return None
