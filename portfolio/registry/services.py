"""Every change to the registry goes through here, with its audit row in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Forbidden, Invalid
from portfolio.registry import artifacts, chat_templates, importers, importing, safety
from portfolio.registry.choices import Source, Task, VersionKind, VersionStatus, Visibility
from portfolio.registry.hashing import Manifest
from portfolio.registry.inspection import ModelFacts
from portfolio.registry.models import (
    Alias,
    Artifact,
    Model,
    ModelVersion,
    alias_validator,
    model_name_validator,
)
from portfolio.registry.promotion_guard import PromotionCheck, require_passed

# Other apps register "is this version in use?" checks (serving: deployments), each returning a reason.
VERSION_IN_USE_CHECKS: list[Callable[[ModelVersion], str | None]] = []
# The same of any version of a model (serving: deployments of any of them), asked before its task changes.
MODEL_IN_USE_CHECKS: list[Callable[[Model], str | None]] = []
# Other apps register promotion checks (training: eval scores): given a candidate for a guarded alias and
# the alias's holder, each returns what it holds against the candidate (``promotion_guard.Finding``).
PROMOTION_CHECKS: list[PromotionCheck] = []
# Other apps register what a promotion sets in motion (serving: a rollout of the version on the endpoint
# named, or on the endpoints that served the alias's previous holder). Called inside ``promote``'s
# transaction as (actor, version, previous holder or None, alias, endpoint name or ""); each returns what
# it did, one sentence per endpoint. Raising a DomainError undoes the promotion.
PROMOTION_FOLLOWERS: list[Callable[[Actor, ModelVersion, ModelVersion | None, str, str], list[str]]] = []
# Other apps register how many of a team's uploads of theirs wait on disk for a worker (training: its dataset
# ingests): an adapter archive is refused past ``UPLOADS_PER_TEAM`` counting them (``require_upload_room``).
UPLOADS_WAITING: list[Callable[[Team], int]] = []
IMPORTABLE_SOURCES = (Source.HUB, Source.LOCAL, Source.GGUF, Source.UPLOAD)
# A card given with an import: as much as an imported folder's README.md is read (``inspection``).
MAX_MODEL_CARD_CHARS = 512 * 1024
# Model names that would collide with UI routes under /models/.
RESERVED_MODEL_NAMES = frozenset({"new"})
MAX_TAGS, MAX_TAG_LENGTH = 20, 40


def _clean_tags(tags: list[str]) -> list[str]:
    cleaned = sorted({t.strip().lower() for t in tags if t.strip()})
    if len(cleaned) > MAX_TAGS or any(len(t) > MAX_TAG_LENGTH for t in cleaned):
        raise Invalid(f"tags: at most {MAX_TAGS} tags of up to {MAX_TAG_LENGTH} characters.")
    return cleaned


def _check(validator, value: str, field: str) -> str:
    from django.core.exceptions import ValidationError

    try:
        validator(value)
    except ValidationError as exc:
        raise Invalid(f"{field}: {exc.messages[0]}", fields={field: exc.messages}) from None
    return value


# --- Models ----------------------------------------------------------------------------------------
@transaction.atomic
def create_model(
    *,
    actor: Actor,
    name: str,
    owner_team: Team,
    task: str = Task.CHAT,
    description: str = "",
    visibility: str = Visibility.TEAM,
    tags: list[str] | None = None,
    license: str = "",
) -> Model:
    gate.require(actor, "model.register", owner_team)
    description, license = _texts(description, license)
    name = _check(model_name_validator, name.strip().lower(), "name")
    if name in RESERVED_MODEL_NAMES:
        raise Invalid(f"name: {name!r} is reserved by the web UI; choose another name.")
    tags = _clean_tags(tags or [])
    if task not in Task.values:
        raise Invalid(f"task: choose one of {', '.join(Task.values)}.")
    if visibility not in Visibility.values:
        raise Invalid(f"visibility: choose one of {', '.join(Visibility.values)}.")
    model = Model(
        name=name,
        owner_team=owner_team,
        task=task,
        description=description.strip(),
        visibility=visibility,
        tags=tags,
        license=license.strip(),
        created_by=actor.user,
    )
    try:
        with transaction.atomic():
            model.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"A model named {name!r} already exists.") from None
    audit.record(actor, "model.create", model, after=model.snapshot())
    return model


MAX_DESCRIPTION, MAX_LICENSE = 5000, 100  # as the model form's fields


def _texts(description: str, license: str) -> tuple[str, str]:
    """A model's description and license, stripped and within their bounds (the license's column holds
    100 characters: past it the save failed with a 500)."""
    if len(description.strip()) > MAX_DESCRIPTION:
        raise Invalid(f"description: at most {MAX_DESCRIPTION} characters.")
    if len(license.strip()) > MAX_LICENSE:
        raise Invalid(f"license: at most {MAX_LICENSE} characters (an SPDX identifier, e.g. Apache-2.0).")
    return description.strip(), license.strip()


@transaction.atomic
def update_model(
    *, actor: Actor, model: Model, description: str, visibility: str, tags: list[str], license: str, task: str
) -> Model:
    gate.require(actor, "model.register", model)
    description, license = _texts(description, license)
    # The row as stored now, locked, into the caller's object: its "before" is what this change replaces
    # (the caller's copy may predate another's change, which its audit row would then hide), and the caller
    # sees what was saved. A no-key lock, as strong as the save's own: nothing that refers to the model waits.
    model.refresh_from_db(from_queryset=Model.objects.select_for_update(no_key=True))
    before = model.snapshot()
    if visibility not in Visibility.values or task not in Task.values:
        raise Invalid("visibility/task: not a known value.")
    if task != model.task and (reasons := [why for check in MODEL_IN_USE_CHECKS if (why := check(model))]):
        # Serving runs and calls a model by its task: changed under a deployment, every call to it was refused.
        raise Conflict(f"task: {model.name}'s task cannot change while {'; '.join(reasons)}.")
    model.description, model.visibility, model.license, model.task = description, visibility, license, task
    model.tags = _clean_tags(tags)
    model.save(update_fields=["description", "visibility", "tags", "license", "task"])
    audit.record(actor, "model.update", model, before=before, after=model.snapshot())
    return model


# --- Imports ---------------------------------------------------------------------------------------
def require_upload_room(team: Team, *waiting_elsewhere: Callable[[Team], int]) -> None:
    """An upload (up to ``MAX_UPLOAD_BYTES``) waits on disk until a long worker, which every team's merges,
    eval runs, imports and ingests share, imports or ingests it: a team keeps ``UPLOADS_PER_TEAM`` waiting,
    counted under its row's lock as its merges and eval runs are. Counted: its adapter archives still
    importing, and what ``waiting_elsewhere`` counts (training's dataset ingests). Found by review: one
    engineer had 50 uploads of up to 2 GiB each accepted, all kept on disk until a worker took them up."""
    Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
    adapters = ModelVersion.objects.filter(
        model__owner_team=team, source=Source.UPLOAD, status=VersionStatus.IMPORTING
    )
    waiting = adapters.count() + sum(count(team) for count in waiting_elsewhere)
    if waiting >= settings.UPLOADS_PER_TEAM:
        raise Conflict(
            f"{team.name} has {waiting} upload(s) waiting to be imported or ingested, the most at once "
            f"({settings.UPLOADS_PER_TEAM}); upload this one when one of them ends."
        )


def require_import_room(team: Team) -> None:
    """An import from the Hub, a folder or a GGUF file holds a long worker, which every team's merges, eval
    runs and ingests share, for as long as its download and conversion take (up to ``MAX_IMPORT_BYTES``): a
    team keeps ``IMPORTS_PER_TEAM`` queued or running, counted under its row's lock as its merges, eval runs
    and uploads are. Found by review: a team could queue any number, each taking a worker in turn."""
    Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
    in_flight = (
        ModelVersion.objects.filter(model__owner_team=team, status=VersionStatus.IMPORTING)
        .exclude(source=Source.UPLOAD)
        .count()
    )
    if in_flight >= settings.IMPORTS_PER_TEAM:
        raise Conflict(
            f"{team.name} has {in_flight} import(s) queued or running, the most at once "
            f"({settings.IMPORTS_PER_TEAM}); start this one when one of them ends."
        )


def save_upload(chunks, filename: str, team: Team | None = None) -> Path:
    """Stream an uploaded archive to the uploads folder, refusing it past the size limit. Given the model's
    ``team``, refused before a byte is written while the team has its share of uploads waiting
    (``start_import`` counts again under the lock, and its callers delete the file it refuses)."""
    if not filename.lower().endswith(".zip"):
        raise Invalid("file: Upload an adapter as a .zip with adapter_config.json and safetensors weights.")
    if team is not None:
        with transaction.atomic():
            require_upload_room(team, *UPLOADS_WAITING)
    folder = Path(settings.DATA_DIR) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}.zip"
    written = 0
    try:
        with target.open("wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > settings.MAX_UPLOAD_BYTES:
                    raise Invalid(f"file: The upload exceeds the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _next_number(model: Model) -> int:
    Model.objects.select_for_update().filter(pk=model.pk).first()  # serialise numbering per model
    last = model.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def start_import(
    *,
    actor: Actor,
    model: Model,
    source: str,
    ref: str,
    base_version: ModelVersion | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    upload_path: Path | None = None,
    model_card: str = "",
    chat_template: str = "",
    enqueue: bool = True,
) -> ModelVersion:
    """Register a version in ``importing`` state and queue its import on the control queue
    (``enqueue=False`` when the caller runs the import itself). A ``chat_template`` given here is written
    into the imported tokenizer (for files that have none, or the wrong one)."""
    gate.require(actor, "model.register", model)
    if len(model_card) > MAX_MODEL_CARD_CHARS:
        raise Invalid(f"model_card: at most {MAX_MODEL_CARD_CHARS:,} characters.")
    if source not in IMPORTABLE_SOURCES:
        raise Invalid(f"source: imports come from {', '.join(IMPORTABLE_SOURCES)}.")
    if (allow_pickle or trust_remote_code) and not actor.is_admin:
        raise Forbidden("Only a platform admin may allow pickle weights or custom model code for an import.")
    ref = ref.strip()
    if source == Source.HUB:
        try:
            importers.parse_hub_ref(ref)
        except importers.ImportFailed as exc:
            raise Invalid(f"ref: {exc}") from None
        if refused := importers.public_hub_refusal():
            raise Invalid(f"source: {refused}")  # nothing queued, so no name leaves
    elif source in (Source.LOCAL, Source.GGUF):
        ref = str(safety.resolve_import_path(ref))
        if source == Source.GGUF and not ref.endswith(".gguf"):
            raise Invalid("ref: A GGUF import needs a .gguf file.")
    elif upload_path is None:
        raise Invalid("file: Attach the adapter archive.")
    # The team's lock before the base version's (every taker of a team's lock orders them so: a restart onto
    # the base deadlocked with an upload the other way). Bounded only where a worker imports it.
    if source == Source.UPLOAD and enqueue:  # it waits on disk until then
        require_upload_room(model.owner_team, *UPLOADS_WAITING)
    elif enqueue:
        require_import_room(model.owner_team)
    kind = VersionKind.BASE
    if base_version is not None:
        gate.get_visible(actor, ModelVersion, pk=base_version.pk)
        # Read under a lock archive_version's waits for: a base archived meanwhile gets no new adapter. A
        # no-key lock: rows that refer to the base (a fine-tune's output registered meanwhile) are let through.
        base_version = ModelVersion.objects.select_for_update(no_key=True).get(pk=base_version.pk)
        if base_version.kind != VersionKind.BASE or base_version.status != VersionStatus.READY:
            raise Invalid("base_version: An adapter's base must be a ready base version.")
        team = model.owner_team
        if not ModelVersion.objects.shared_with_team(team).filter(pk=base_version.pk).exists():
            # Seen by the actor (a member of two teams) is not usable by the model's team: served on it, the
            # adapter would run another team's private base and copy its facts.
            raise Invalid(
                f"base_version: {base_version.label} is not shared with {team.name}, which owns {model.name}."
            )
        kind = VersionKind.ADAPTER
    elif source == Source.UPLOAD:
        raise Invalid("base_version: Say which base version the adapter was trained on.")
    if chat_template.strip():
        chat_template = chat_templates.validate(chat_template)
        if kind == VersionKind.ADAPTER:
            raise Invalid(
                "chat_template: An adapter is served with its base version's tokenizer and template; "
                "set the template on the base version."
            )
    options: dict[str, object] = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    if upload_path is not None:
        options["upload_path"] = str(upload_path)
    if chat_template.strip():
        options["chat_template"] = chat_template
    version = ModelVersion.objects.create(
        model=model,
        number=_next_number(model),
        kind=kind,
        base_version=base_version,
        source=source,
        source_ref=ref[:500],
        import_options=options,
        status=VersionStatus.IMPORTING,
        model_card=model_card,
        created_by=actor.user,
        heartbeat_at=timezone.now(),
        progress_detail=importing.QUEUED,  # the reaper sends it again while no run has started it
    )
    audited = dict(options)
    if "chat_template" in audited:
        audited["chat_template"] = chat_templates.fingerprint(chat_template)  # the text is in the files
    audit.record(actor, "model_version.import", version, after={**version.snapshot(), "options": audited})
    from portfolio.registry.tasks import import_version

    if enqueue:
        transaction.on_commit(lambda: import_version.delay(version.pk))
    return version


# --- Lifecycle -------------------------------------------------------------------------------------
GUARDED_ALIASES = frozenset({"production"})
MAX_ENDPOINT_NAME = 63


@dataclass(frozen=True)
class Promotion:
    """An alias moved, and what the promotion set in motion (rollouts started, or why not)."""

    alias: Alias
    followed: list[str]


@transaction.atomic
def promote(
    *, actor: Actor, version: ModelVersion, alias: str, force_reason: str = "", endpoint: str = ""
) -> Promotion:
    """Point ``alias`` (e.g. production) at ``version``; the audit row names the previous holder.

    ``production`` refuses a candidate that scores below the current holder on an eval set, or was never
    scored on one while the holder was, unless an owner forces it with a reason (kept in the audit row;
    ``promotion_guard``). Then the registered followers act on it: serving starts a rollout on ``endpoint``
    if one is named, else (for ``production``) on every endpoint whose weighted routes serve another version
    of the model (the previous holder, or the version traffic stayed on when the last rollout was rolled
    back)."""
    gate.require(actor, "model.promote", version.model)
    # Locked as archive_version locks it: a version archived since the caller read it is not promoted.
    version = ModelVersion.objects.select_for_update(of=("self",)).select_related("model").get(pk=version.pk)
    alias = _check(alias_validator, alias.strip().lower(), "alias")
    endpoint = endpoint.strip()
    if len(endpoint) > MAX_ENDPOINT_NAME:
        raise Invalid("endpoint: an endpoint's name.", fields={"endpoint": ["Too long."]})
    if version.status != VersionStatus.READY:
        raise Conflict(f"{version.label} is {version.status}; only a ready version can be promoted.")
    existing = Alias.objects.select_for_update(of=("self",)).filter(model=version.model, name=alias).first()
    previous = existing.version if existing else None
    force_reason = force_reason.strip()
    if alias in GUARDED_ALIASES and previous is not None and previous.pk != version.pk:
        require_passed(
            PROMOTION_CHECKS,
            actor=actor,
            version=version,
            holder=previous,
            alias=alias,
            force_reason=force_reason,
        )
    elif force_reason:
        force_reason = ""  # nothing to override
    if existing:
        existing.version, existing.updated_at, existing.updated_by = version, timezone.now(), actor.user
        existing.save(update_fields=["version", "updated_at", "updated_by"])
        holder = existing
    else:
        try:  # two first promotions to the alias at once: the second waits for the first's row, then fails
            with transaction.atomic():
                holder = Alias.objects.create(
                    model=version.model, name=alias, version=version, updated_by=actor.user
                )
        except IntegrityError:
            raise Conflict(f"{alias} was just set by someone else; reload and try again.") from None
    followed = [
        note for follow in PROMOTION_FOLLOWERS for note in follow(actor, version, previous, alias, endpoint)
    ]
    after: dict = {"alias": alias, "version": version.label}
    if force_reason:
        after["forced"] = force_reason
    if followed:
        after["followed"] = followed
    audit.record(
        actor,
        "model.promote",
        version.model,
        before={"alias": alias, "version": previous.label if previous else None},
        after=after,
    )
    return Promotion(alias=holder, followed=followed)


def in_use_reasons(version: ModelVersion) -> list[str]:
    reasons = [reason for check in VERSION_IN_USE_CHECKS if (reason := check(version))]
    aliases = list(version.aliases.values_list("name", flat=True))
    if aliases:
        reasons.append(f"it holds the alias {', '.join(aliases)}: move the alias first")
    if version.adapters.exclude(status__in=VersionStatus.terminal()).exists():  # a failed one holds no files
        reasons.append("adapters built on it are not archived")
    return reasons


@transaction.atomic
def archive_version(*, actor: Actor, version: ModelVersion) -> ModelVersion:
    gate.require(actor, "model.register", version.model)
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team")
        .get(pk=version.pk)
    )
    reasons = in_use_reasons(version)
    if reasons:
        raise Conflict(f"{version.label} cannot be archived: {'; '.join(reasons)}.")
    if version.status == VersionStatus.IMPORTING:
        raise Conflict(f"{version.label} is still importing.")
    before = version.snapshot()
    version.status = VersionStatus.ARCHIVED
    version.save(update_fields=["status"])
    audit.record(actor, "model_version.archive", version, before=before, after=version.snapshot())
    return version


@transaction.atomic
def purge_version(*, actor: Actor, version: ModelVersion) -> ModelVersion:
    """Delete the stored files of an archived version, which are billed every day while kept: the version
    stays listed (lineage, metrics, card) without files. Whoever may archive it may purge it, under the same
    lock and refusals; files another artifact holds stay (``artifacts.discard_if_unused``)."""
    gate.require(actor, "model.register", version.model)
    version = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model__owner_team")
        .get(pk=version.pk)
    )
    held = version.artifact.files if version.artifact is not None else []
    # Archived, it was not in use then; checked again as archive checks, in case something took it up since.
    before = artifacts.purge_files(version, archived=VersionStatus.ARCHIVED, reasons=in_use_reasons(version))
    # The conversion of the GGUF it came from, on this machine, unless another version still holds that GGUF.
    transaction.on_commit(lambda: artifacts.forget_gguf_conversions(held), robust=True)
    audit.record(actor, "model_version.purge", version, before=before, after=version.snapshot())
    return version


@transaction.atomic
def register_trained_version(
    *,
    actor: Actor,
    model: Model,
    base_version: ModelVersion,
    manifest: Manifest,
    facts: ModelFacts,
    store_uri: str,
    source: str,
    source_ref: str,
    metrics: dict,
    model_card: str,
) -> ModelVersion:
    """A version produced by a fine-tune or distillation job: lineage to its base, audited."""
    artifact = Artifact.objects.record(manifest, store_uri)
    adapter = facts.is_adapter
    version = ModelVersion.objects.create(
        model=model,
        number=_next_number(model),
        kind=VersionKind.ADAPTER if adapter else VersionKind.BASE,
        base_version=base_version if adapter else None,
        parent_version=base_version,
        source=source,
        source_ref=source_ref[:500],
        artifact=artifact,
        format=facts.format,
        architecture=facts.architecture or base_version.architecture,
        parameter_count=facts.parameter_count,
        context_length=facts.context_length or base_version.context_length,
        dtype=facts.dtype,
        has_chat_template=base_version.has_chat_template,
        shape=facts.shape or base_version.shape,
        # A full fine-tune has its own config; an adapter serves on its base and is what the base is.
        family=facts.family or base_version.family,
        architecture_facts=facts.architecture_facts or base_version.architecture_facts,
        metrics={**metrics, **({"adapter": facts.adapter} if facts.adapter else {})},
        model_card=model_card,
        status=VersionStatus.READY,
        progress=100,
        progress_detail="ready",
        ready_at=timezone.now(),
    )
    audit.record(actor, "model_version.register", version, after=version.snapshot())
    return version
