"""An import folder is its engineers' to write while a worker reads it: a file or folder checked once can be
swapped (for another file, or for a link to a secret of the worker's) before it is read again. The swaps
are made here at the moment between two reads, by wrapping the step that comes between them.

A GGUF is read once, into the import's own folder, and only that copy is hashed, converted, cached under
its hash (a cache every team's imports of the same GGUF share) and stored. A folder's files are read from
handles opened with no link followed, in the folder's path or below it."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portfolio.registry import importers, safety, services, storage
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.importers import conversion_entry
from portfolio.registry.models import Artifact
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for
from tests.registry.conftest import make_model_folder
from tests.registry.engineer import _import
from tests.registry.gguf_files import write_tiny_gguf

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]

SECRET = b"worker secret: hunter2"


def _secret(tmp_path: Path) -> Path:
    """A file of the worker's, outside every import root."""
    secret = tmp_path / "run-secrets" / "token"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return secret


def _stored(settings) -> list[bytes]:
    blobs = Path(settings.ARTIFACT_ROOT) / "blobs"
    return [path.read_bytes() for path in blobs.rglob("*") if path.is_file()] if blobs.exists() else []


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_gguf_swapped_for_another_before_it_is_converted_caches_only_its_own_conversion(
    org, model, settings, tmp_path, monkeypatch
):
    """The converter opened the path again, up to half an hour after it was hashed: another GGUF put there
    meanwhile was converted and cached under the first one's hash, and every team's later import of the
    genuine GGUF got it. The work folder lies behind a link here (a data dir on a mounted disk): that is the
    platform's, and still works."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "data-link").symlink_to(tmp_path / "disk")
    settings.DATA_DIR = tmp_path / "data-link"
    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    source = write_tiny_gguf(settings.IMPORT_ROOTS[0] / "tiny.gguf", add_bos=True)
    genuine = source.read_bytes()
    other = write_tiny_gguf(tmp_path / "other" / "tiny.gguf", chat_template="{{ 'swapped in' }}")
    run = subprocess.run

    def swapped_then_converted(args, **kwargs):
        if "portfolio.registry.gguf_convert" in args:
            os.replace(other, source)
        return run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", swapped_then_converted)
    version = _import(org, model, Source.GGUF, str(source))

    assert version.status == VersionStatus.READY, version.status_detail
    assert source.read_bytes() != genuine, "the swap was made"
    [entry] = list(settings.GGUF_CONVERSION_CACHE.iterdir())
    assert entry == conversion_entry(_sha256(genuine)) and (entry / ".complete").exists()
    assert not any(
        "swapped in" in path.read_text(errors="replace") for path in entry.rglob("*") if path.is_file()
    )
    assert not version.has_chat_template
    [original] = [f for f in version.artifact.files if f["path"] == "original/tiny.gguf"]
    assert original["sha256"] == _sha256(genuine)


def test_a_gguf_swapped_for_a_link_to_a_secret_once_hashed_stores_the_bytes_hashed(
    org, model, settings, tmp_path, monkeypatch
):
    """The GGUF was linked or copied into the version (``original/``, downloadable) by its path, after its
    conversion: a link to a secret put there meanwhile was followed, and the secret stored. The import root
    lies on another disk than the work folder here, as it does in production: no hard link can be made."""
    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    source = settings.IMPORT_ROOTS[0] / "tiny.gguf"
    genuine = b"GGUF stand-in: its conversion is cached already, so it is never converted"
    source.write_bytes(genuine)
    entry = conversion_entry(_sha256(genuine))
    make_model_folder(entry)
    (entry / ".complete").touch()
    secret = _secret(tmp_path)
    link_tree = importers._link_tree

    def linked_after_the_swap(from_folder, to_folder):
        if from_folder == entry:  # the cached conversion is being reused: the GGUF was read already
            source.unlink()
            source.symlink_to(secret)
        return link_tree(from_folder, to_folder)

    def across_disks(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(importers, "_link_tree", linked_after_the_swap)
    monkeypatch.setattr(os, "link", across_disks)
    version = _import(org, model, Source.GGUF, str(source))

    assert version.status == VersionStatus.READY, version.status_detail
    assert source.is_symlink(), "the swap was made"
    [original] = [f for f in version.artifact.files if f["path"] == "original/tiny.gguf"]
    assert original["sha256"] == _sha256(genuine)
    assert SECRET not in _stored(settings)


def test_a_gguf_whose_folder_is_swapped_for_a_link_once_checked_is_refused_and_nothing_is_cached(
    org, model, settings, tmp_path, monkeypatch
):
    """Links anywhere in an import path are refused when it is checked; one put in its place right after was
    followed, to a GGUF outside the import roots, which was converted, cached and stored."""
    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    folder = settings.IMPORT_ROOTS[0] / "team"
    source = write_tiny_gguf(folder / "tiny.gguf", add_bos=True)
    elsewhere = write_tiny_gguf(tmp_path / "elsewhere" / "tiny.gguf", chat_template="{{ 'not yours' }}")
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.GGUF, ref=str(source), enqueue=False
    )
    resolve = safety.resolve_import_path

    def checked_then_swapped(raw, **kwargs):
        path = resolve(raw, **kwargs)
        folder.rename(folder.with_name("team.moved"))
        folder.symlink_to(elsewhere.parent)
        return path

    monkeypatch.setattr(safety, "resolve_import_path", checked_then_swapped)
    import_version(version.pk)
    version.refresh_from_db()

    assert version.status == VersionStatus.FAILED and "symbolic link" in version.status_detail
    assert version.artifact is None and not Artifact.objects.exists() and not _stored(settings)
    cache = settings.GGUF_CONVERSION_CACHE
    assert not cache.exists() or not any(cache.iterdir())


def test_a_sub_folder_swapped_for_a_link_once_listed_fails_the_import_and_stores_nothing_outside(
    org, model, settings, tmp_path, monkeypatch
):
    """Each file was hashed and stored by its path, after the listing had checked its last part only: a
    sub-folder swapped for a link to the worker's secrets in between had them stored."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "extra").mkdir()
    (folder / "extra" / "token").write_text("notes")
    secret = _secret(tmp_path)
    listed = storage.iter_files

    def listed_then_swapped(directory):
        files = list(listed(directory))
        shutil.rmtree(folder / "extra")
        (folder / "extra").symlink_to(secret.parent)
        yield from files

    monkeypatch.setattr(storage, "iter_files", listed_then_swapped)
    version = _import(org, model, Source.LOCAL, str(folder))

    assert (folder / "extra").is_symlink(), "the swap was made"
    assert version.status == VersionStatus.FAILED and "symbolic link" in version.status_detail
    assert version.artifact is None and SECRET not in _stored(settings)


def test_a_folder_swapped_for_a_link_once_fetched_fails_the_import_and_stores_nothing_outside(
    org, model, settings, tmp_path, monkeypatch
):
    """The folder was read in place by its path, after it was checked: swapped for a link to a folder outside
    the import roots meanwhile, that folder's files were stored."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    outside = make_model_folder(tmp_path / "outside")
    (outside / "token").write_bytes(SECRET)
    fetch = importers.fetch

    def fetched_then_swapped(version, workdir, report):
        fetched = fetch(version, workdir, report)
        folder.rename(folder.with_name("tiny.moved"))
        folder.symlink_to(outside)
        return fetched

    monkeypatch.setattr(importers, "fetch", fetched_then_swapped)
    version = _import(org, model, Source.LOCAL, str(folder))

    assert version.status == VersionStatus.FAILED and "symbolic link" in version.status_detail
    assert version.artifact is None and SECRET not in _stored(settings)


def test_a_folder_given_a_chat_template_copies_only_its_own_files_into_the_imports_copy(
    org, model, settings, tmp_path, monkeypatch
):
    """A chat template given with the import is written into the import's own copy of the folder, made of
    links to (or copies of) its files by their paths: a sub-folder swapped for a link to the worker's secrets
    as they were linked had the secrets linked in, and stored."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "extra").mkdir()
    (folder / "extra" / "token").write_bytes(b"notes")
    secret = _secret(tmp_path)
    link = os.link

    def swapped_then_linked(source, destination, *args, **kwargs):
        if Path(destination).as_posix().endswith("extra/token") and not (folder / "extra").is_symlink():
            shutil.rmtree(folder / "extra")
            (folder / "extra").symlink_to(secret.parent)
        return link(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "link", swapped_then_linked)
    version = _import(org, model, Source.LOCAL, str(folder), chat_template="{{ messages }}")

    assert (folder / "extra").is_symlink(), "the swap was made"
    assert SECRET not in _stored(settings)
    assert version.status == VersionStatus.READY, version.status_detail
    [token] = [f for f in version.artifact.files if f["path"] == "extra/token"]
    assert token["sha256"] == _sha256(b"notes")


def test_a_fifo_in_place_of_a_gguf_is_refused_without_waiting_for_a_writer(org, model, settings, tmp_path):
    source = settings.IMPORT_ROOTS[0] / "tiny.gguf"
    os.mkfifo(source)
    version = _import(org, model, Source.GGUF, str(source))
    assert version.status == VersionStatus.FAILED and "regular file" in version.status_detail
