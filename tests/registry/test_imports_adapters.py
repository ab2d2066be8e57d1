"""Adapters uploaded as archives: a safe one becomes an adapter version of its base, a hostile or oversized
one is refused with nothing written, one the reaper fails is deleted; an adapter goes only on a ready base
its team may serve. Imports from a server folder or the Hub are tests/registry/test_imports.py."""

from __future__ import annotations

import threading
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.errors import Invalid
from portfolio.registry import importing, services
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import reap_stale_imports
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder
from tests.registry.engineer import _import

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
    return path


def _adapter_members(tmp_path) -> dict[str, bytes]:
    folder = make_adapter_folder(tmp_path / "adapter-src")
    return {f"my-adapter/{p.name}": p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def base(org, model, settings):
    return _import(org, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / "base")))


def _upload(org, model, base, archive: Path) -> ModelVersion:
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    return _import(org, model, Source.UPLOAD, archive.name, base_version=base, upload_path=saved)


def test_an_uploaded_adapter_becomes_an_adapter_version_of_its_base(org, model, base, tmp_path):
    version = _upload(org, model, base, _zip(tmp_path / "a.zip", _adapter_members(tmp_path)))
    assert version.status == VersionStatus.READY, version.status_detail
    assert (version.kind, version.base_version, version.format) == (VersionKind.ADAPTER, base, "peft-lora")
    assert version.metrics["adapter"]["r"] == 8
    assert not list((Path(version.import_options["upload_path"]).parent).glob("*.zip")), "upload cleaned up"


@pytest.mark.parametrize(
    ("members", "symlink", "reason"),
    [
        ({"../../evil.txt": b"x"}, None, "Unsafe path"),
        ({"/abs/evil.txt": b"x"}, None, "Unsafe path"),
        ({}, "my-adapter/link", "link or special file"),
        ({"bomb.bin": b"\0" * (50 * 1024 * 1024)}, None, "zip bomb"),
    ],
)
def test_hostile_archives_are_refused_and_nothing_is_written(
    org, model, base, tmp_path, members, symlink, reason
):
    archive = _zip(tmp_path / "bad.zip", {**_adapter_members(tmp_path), **members}, symlink=symlink)
    version = _upload(org, model, base, archive)
    assert version.status == VersionStatus.FAILED and reason in version.status_detail
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    assert version.artifact is None


def test_an_upload_over_the_size_limit_is_refused_while_streaming(settings, tmp_path):
    settings.MAX_UPLOAD_BYTES = 1000
    with pytest.raises(Invalid, match="exceeds the limit"):
        services.save_upload(iter([b"x" * 600, b"x" * 600]), "a.zip")
    assert not list((Path(settings.DATA_DIR) / "uploads").glob("*"))


@pytest.mark.django_db(transaction=True)
def test_an_adapters_import_lets_rows_referring_to_its_base_through(org, model, base, tmp_path):
    """Its lock on the base (against an archive meanwhile) lets other rows refer to the base: a fine-tune's
    output registered into the same model at that moment would otherwise deadlock with it."""
    from django.db import connection, transaction

    archive = _zip(tmp_path / "a.zip", _adapter_members(tmp_path))
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    outcome = {}

    def refer_to_the_base() -> None:
        try:
            with connection.cursor() as cursor:  # what a foreign key's check takes
                cursor.execute(
                    "SELECT 1 FROM registry_modelversion WHERE id = %s FOR KEY SHARE NOWAIT", [base.pk]
                )
                outcome["referred"] = True
        except Exception as exc:  # noqa: BLE001 - handed to the assertion
            outcome["error"] = exc
        finally:
            connection.close()

    with transaction.atomic():
        services.start_import(
            actor=actor_for(org["engineer"]), model=model, source=Source.UPLOAD, ref=archive.name,
            base_version=base, upload_path=saved, enqueue=False,
        )  # fmt: skip
        other = threading.Thread(target=refer_to_the_base)
        other.start()
        other.join(10)
    assert outcome == {"referred": True}, outcome


def test_an_upload_whose_import_the_reaper_fails_is_deleted_with_it(
    org, model, base, tmp_path, django_capture_on_commit_callbacks
):
    archive = _zip(tmp_path / "a.zip", _adapter_members(tmp_path))
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.UPLOAD, ref=archive.name,
        base_version=base, upload_path=saved, enqueue=False,
    )  # fmt: skip
    # Its run started, then its worker died.
    importing.report_progress(version.pk, 10, "extracting the archive")
    ModelVersion.objects.filter(pk=version.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert Path(saved).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert reap_stale_imports() == 1
    assert not Path(saved).exists(), "the worker that would have deleted it is gone"


def test_an_adapter_is_not_put_on_a_base_only_its_uploader_sees(
    org, model, other_team, member_of_both, tmp_path, settings
):
    """A member of two teams sees the other team's private base; the adapter's model is this team's, which
    may not serve that base."""
    from portfolio.errors import Invalid

    theirs = services.create_model(
        actor=actor_for(org["outsider"]), name="contracts-base", owner_team=other_team
    )
    their_base = import_here(
        actor_for(org["outsider"]),
        theirs,
        Source.LOCAL,
        str(make_model_folder(settings.IMPORT_ROOTS[0] / "theirs")),
    )
    archive = _zip(tmp_path / "a.zip", _adapter_members(tmp_path))
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    with pytest.raises(Invalid, match="contracts-base:v1 is not shared with Support AI"):
        services.start_import(
            actor=member_of_both, model=model, source=Source.UPLOAD, ref=archive.name,
            base_version=their_base, upload_path=saved, enqueue=False,
        )  # fmt: skip
    assert not model.versions.exists()


@pytest.mark.django_db(transaction=True)
def test_a_base_archived_meanwhile_gets_no_new_adapter(org, model, base, tmp_path, monkeypatch):
    """The archive has found the base unused and not committed yet when an adapter's import is registered on
    it: the import waits for the archive, then finds the base archived. (Before, it checked the base's status
    without a lock and registered an adapter of an archived base.)"""
    from tests.interleave import Pause, interleave

    archive = _zip(tmp_path / "a.zip", _adapter_members(tmp_path))
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    engineer = actor_for(org["engineer"])
    pause = Pause()
    monkeypatch.setattr(services, "in_use_reasons", pause.hook(services.in_use_reasons))

    archived, imported = interleave(
        pause,
        lambda: services.archive_version(actor=engineer, version=base),
        lambda: services.start_import(
            actor=engineer,
            model=model,
            source=Source.UPLOAD,
            ref=archive.name,
            base_version=base,
            upload_path=saved,
            enqueue=False,
        ),  # fmt: skip
    )

    assert archived.error is None
    assert isinstance(imported.error, Invalid) and "ready base" in str(imported.error), imported.error
    assert not ModelVersion.objects.filter(base_version=base).exists()
