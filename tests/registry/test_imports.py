"""Importing versions: from a server folder, a Hub cache, a GGUF file; the reaper of silent imports.
Unsafe input is refused with a clear reason and nothing is written. Uploaded adapter archives are
tests/registry/test_imports_adapters.py."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from portfolio.errors import Forbidden, Invalid
from portfolio.registry import importing, services
from portfolio.registry.choices import Source, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Artifact, ModelVersion, PendingWrite
from portfolio.registry.tasks import import_version, reap_stale_imports
from tests.conftest import actor_for
from tests.registry.conftest import make_model_folder
from tests.registry.engineer import _import

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


def _silent(org, model, settings, *, started: bool, age: timedelta = timedelta(hours=1)) -> ModelVersion:
    """An import of a server folder registered ``age`` ago and silent for an hour: queued, or its run started."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    if started:
        importing.report_progress(version.pk, 10, "converting tiny.gguf to safetensors")
    now = timezone.now()
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=now - age, heartbeat_at=now - timedelta(hours=1)
    )
    return version


def test_a_server_folder_imports_as_a_ready_version_with_its_facts(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.READY, version.status_detail
    assert (version.number, version.kind, version.architecture) == (1, VersionKind.BASE, "LlamaForCausalLM")
    assert (version.parameter_count, version.context_length, version.dtype) == (32 * 8 + 64, 2048, "bfloat16")
    assert version.has_chat_template and version.model_card.startswith("# Tiny")
    assert version.artifact.file_count == 4
    events = AuditEvent.objects.filter(object_type="registry.modelversion", object_id=str(version.pk))
    assert list(events.values_list("action", flat=True)) == ["model_version.ready", "model_version.import"]
    assert not PendingWrite.objects.exists(), "recorded: nothing left for the sweep"


def test_the_same_files_imported_twice_share_one_artifact(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    first = _import(org, model, Source.LOCAL, str(folder))
    second = _import(org, model, Source.LOCAL, str(folder))
    assert (first.number, second.number) == (1, 2)
    assert first.artifact_id == second.artifact_id and Artifact.objects.count() == 1


@pytest.mark.parametrize("bad", ["{root}/../etc", "/etc", "relative/path", "{root}/missing"])
def test_paths_outside_the_import_roots_are_refused_before_anything_is_written(org, model, settings, bad):
    with pytest.raises(Invalid):
        services.start_import(
            actor=actor_for(org["engineer"]),
            model=model,
            source=Source.LOCAL,
            ref=bad.format(root=settings.IMPORT_ROOTS[0]),
            enqueue=False,
        )
    assert not ModelVersion.objects.exists()


def test_a_symlinked_path_is_refused(org, model, settings, tmp_path):
    outside = make_model_folder(tmp_path / "outside")
    (settings.IMPORT_ROOTS[0] / "link").symlink_to(outside)
    with pytest.raises(Invalid, match="symbolic link"):
        services.start_import(
            actor=actor_for(org["engineer"]),
            model=model,
            source=Source.LOCAL,
            ref=str(settings.IMPORT_ROOTS[0] / "link"),
            enqueue=False,
        )


def test_a_symlink_inside_the_folder_fails_the_import_and_stores_nothing(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "secrets").symlink_to("/etc/shadow")
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and "symbolic link" in version.status_detail
    assert version.artifact is None and not Artifact.objects.exists()
    assert (
        not list((settings.ARTIFACT_ROOT / "blobs").rglob("*")) if settings.ARTIFACT_ROOT.exists() else True
    )


def test_a_file_whose_name_holds_a_newline_fails_the_import_and_stores_nothing(org, model, settings):
    """Stored, its name had no download link (a URL path holds no newline): the version's page was a 500
    for everyone who opened it."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "newline")
    (folder / "notes\n.txt").write_text("hello")
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and "unsafe path" in version.status_detail
    assert version.artifact is None and not Artifact.objects.exists()


def test_pickle_weights_are_refused_unless_an_admin_allows_them(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "pickled")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and "Pickle weights refused" in version.status_detail
    with pytest.raises(Forbidden, match="platform admin"):
        services.start_import(
            actor=actor_for(org["engineer"]),
            model=model,
            source=Source.LOCAL,
            ref=str(folder),
            allow_pickle=True,
        )


def test_custom_model_code_is_refused_without_approval(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "custom")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.Model"}}))
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and "trust_remote_code" in version.status_detail


def test_a_hub_repository_imports_offline_from_the_local_cache(org, model, settings, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    commit = "a" * 40
    repo = cache / "models--acme--tiny"
    make_model_folder(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    settings.HF_CACHE_DIR = str(cache)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    version = _import(org, model, Source.HUB, "acme/tiny@main")
    assert version.status == VersionStatus.READY, version.status_detail
    missing = _import(org, model, Source.HUB, "acme/absent@main")
    assert missing.status == VersionStatus.FAILED and "not in the local Hub cache" in missing.status_detail


class HubListing:
    """A Hub mirror that lists one repository's files (``acme/huge``: a 50 GB safetensors file the import's
    patterns take, a 90 GB pickle file they do not) and records every request it is sent."""

    FILES = [
        {"type": "file", "oid": "1" * 40, "size": 50 * 10**9, "path": "model.safetensors"},
        {"type": "file", "oid": "2" * 40, "size": 90 * 10**9, "path": "pytorch_model.bin"},
        {"type": "file", "oid": "3" * 40, "size": 700, "path": "config.json"},
    ]
    MANY = [{"type": "file", "oid": "4" * 40, "size": 2, "path": f"parts/{i}.json"} for i in range(10_001)]

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                requests.append(("GET", self.path))
                listed = self.path.startswith("/api/models/acme/huge/tree/")
                many = self.path.startswith("/api/models/acme/many/tree/")
                files = HubListing.FILES if listed else HubListing.MANY if many else {"error": "no"}
                listed = listed or many
                body = json.dumps(files).encode()
                self.send_response(200 if listed else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                requests.append(("HEAD", self.path))
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_hub_repository_over_the_import_limit_is_refused_before_its_download(
    org, model, settings, tmp_path, monkeypatch
):
    """Its size was measured once downloaded: a repository of 500 GB filled the worker's disk first, and
    the Hub cache kept it after the refusal. The Hub's listing of the revision is asked first; what the
    import's patterns take (not the pickle file) is measured against the limit, and nothing is fetched."""
    import huggingface_hub.constants as hf_constants

    hub = HubListing()
    try:
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        settings.HF_CACHE_DIR = str(tmp_path / "hf-cache")
        settings.MAX_IMPORT_BYTES = 60 * 10**9  # the safetensors file alone is under it: not refused by size
        allowed = _import(org, model, Source.HUB, "acme/huge@main")
        asked_before = len(hub.requests)
        settings.MAX_IMPORT_BYTES = 40 * 10**9
        refused = _import(org, model, Source.HUB, "acme/huge@main")
    finally:
        hub.server.shutdown()
    assert refused.status == VersionStatus.FAILED
    assert "50000000700 bytes" in refused.status_detail and "nothing was downloaded" in refused.status_detail
    refusal = hub.requests[asked_before:]
    assert len(refusal) == 1 and refusal[0][0] == "GET" and "/tree/main" in refusal[0][1], refusal
    # Under the limit the download went on (this mirror serves no files, so it failed there, not by size).
    assert allowed.status == VersionStatus.FAILED and "import limit" not in allowed.status_detail
    assert len(hub.requests[:asked_before]) > 1


def test_a_version_of_more_than_10000_files_is_refused_before_they_are_hashed(
    org, model, settings, tmp_path, monkeypatch
):
    """Only bytes were bounded: a million empty files passed, each hashed, looked up in the store and
    listed on the version's page. A Hub repository is refused from its listing, a folder once fetched."""
    import huggingface_hub.constants as hf_constants

    hub = HubListing()
    try:
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        settings.HF_CACHE_DIR = str(tmp_path / "hf-cache")
        from_hub = _import(org, model, Source.HUB, "acme/many@main")
    finally:
        hub.server.shutdown()
    assert from_hub.status == VersionStatus.FAILED and "10001 files" in from_hub.status_detail
    assert not [r for r in hub.requests if "/tree/" not in r[1]], "nothing but the listing asked for"
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "many")
    (folder / "parts").mkdir()
    for i in range(10_000):
        (folder / "parts" / f"{i}.json").write_bytes(b"{}")
    from_folder = _import(org, model, Source.LOCAL, str(folder))
    assert from_folder.status == VersionStatus.FAILED and "10004 files" in from_folder.status_detail
    assert from_folder.artifact is None


@pytest.mark.parametrize(
    "shard",
    ["../other/model.safetensors", "/var/lib/portfolio/cache/abc/model.safetensors", "missing.safetensors"],
    ids=["outside", "absolute", "absent"],
)
def test_a_sharded_checkpoints_index_may_name_only_files_of_its_folder(org, model, settings, shard):
    """transformers joins an index's file names to the folder as they are: a weight_map naming
    ``../x`` or an absolute path would have a trainer, merge or evaluation load another file of the node."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"embed": "model-00001-of-00002.safetensors", "layer.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and repr(shard) in version.status_detail
    assert version.artifact is None
    index["weight_map"]["layer.weight"] = "./model-00001-of-00002.safetensors"  # its own files: imported
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _import(org, model, Source.LOCAL, str(folder)).status == VersionStatus.READY


def test_a_silent_import_is_failed_by_the_reaper_never_left_importing(org, model, settings, sent):
    """Its run started and fell silent without its lease: its worker died."""
    version = _silent(org, model, settings, started=True)
    assert reap_stale_imports() == 1
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED and "stopped reporting progress" in version.status_detail
    assert sent == []


def test_a_silent_import_whose_run_holds_its_lease_is_left_alone(org, model, settings, sent):
    """A GGUF conversion or a Hub download says nothing for as long as it takes; its run is alive."""
    version = _silent(org, model, settings, started=True)
    lease = importing.lease_of(version.pk)  # as the running task holds it
    assert lease.acquire(wait=False)
    try:
        assert reap_stale_imports() == 0
    finally:
        lease.release()
    version.refresh_from_db()
    assert version.status == VersionStatus.IMPORTING and sent == []


def test_a_queued_import_waiting_for_busy_workers_is_sent_again_and_made_by_the_next_run(
    org, model, settings, sent
):
    version = _silent(org, model, settings, started=False)
    assert reap_stale_imports() == 0
    assert sent == [("registry.import_version", (version.pk,))]
    version.refresh_from_db()
    assert version.status == VersionStatus.IMPORTING
    assert version.heartbeat_at > timezone.now() - timedelta(minutes=1)
    # A minute later: not sent again before it could start.
    assert reap_stale_imports() == 0 and len(sent) == 1
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_detail


def test_resends_of_a_queued_import_back_off_as_it_waits(org, model, settings, sent):
    """Eight hours queued, last sent an hour ago: not yet (a quarter of its age apart); three hours ago: sent."""
    version = _silent(org, model, settings, started=False, age=timedelta(hours=8))
    assert reap_stale_imports() == 0 and sent == []
    ModelVersion.objects.filter(pk=version.pk).update(heartbeat_at=timezone.now() - timedelta(hours=3))
    assert reap_stale_imports() == 0 and sent == [("registry.import_version", (version.pk,))]


def test_a_run_that_died_before_its_first_progress_report_is_failed_not_sent_again(
    org, model, settings, sent, monkeypatch
):
    """Taken up, an import is no longer queued, whatever the importer said so far."""
    version = _silent(org, model, settings, started=False)
    monkeypatch.setattr(importing, "_import", lambda version: None)  # its worker died at once
    import_version(version.pk)
    ModelVersion.objects.filter(pk=version.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert reap_stale_imports() == 1
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED and sent == []


def test_an_import_no_worker_took_up_in_a_day_is_failed_with_the_reason(org, model, settings, sent):
    version = _silent(org, model, settings, started=False, age=timedelta(hours=25))
    assert reap_stale_imports() == 1
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED and "No worker took the import up" in version.status_detail
    assert sent == []


def test_visibility_decides_who_sees_a_model(org, model, other_team):
    from portfolio.accounts import gate
    from portfolio.errors import NotFound
    from portfolio.registry.models import Model

    outsider = actor_for(org["outsider"])
    assert not gate.visible(outsider, Model).filter(pk=model.pk).exists()
    with pytest.raises(NotFound):
        services.start_import(actor=outsider, model=model, source=Source.HUB, ref="a/b")
    services.update_model(
        actor=actor_for(org["owner"]),
        model=model,
        description="",
        tags=[],
        license="",
        task=model.task,
        visibility=Visibility.ORGANISATION,
    )
    assert gate.visible(outsider, Model).filter(pk=model.pk).exists()
    with pytest.raises(Forbidden):
        services.start_import(actor=outsider, model=model, source=Source.HUB, ref="a/b")


def test_a_viewer_cannot_register_versions(org, model):
    with pytest.raises(Forbidden):
        services.start_import(actor=actor_for(org["viewer"]), model=model, source=Source.HUB, ref="a/b")


def test_files_stored_by_an_import_failed_meanwhile_are_not_kept(org, model, settings, monkeypatch):
    """The reaper failed the import while its (stalled) worker still stored the files: completing finds it
    failed and records nothing, so what it wrote is deleted, except blobs other artifacts hold."""
    from portfolio.registry import importing
    from portfolio.registry.stores import default_store

    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "late")
    (folder / "only-here.txt").write_bytes(b"written by the late import alone")
    completing = importing.complete_import

    def failed_meanwhile(version_id, *args):
        importing.fail_import(version_id, "The import stopped reporting progress (its worker died?).")
        return completing(version_id, *args)

    monkeypatch.setattr(importing, "complete_import", failed_meanwhile)
    version = _import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED and "stopped reporting" in version.status_detail
    assert version.artifact is None
    import hashlib

    store = default_store()
    assert not store.has_blob(hashlib.sha256(b"written by the late import alone").hexdigest())
    assert not PendingWrite.objects.exists()
    monkeypatch.setattr(importing, "complete_import", completing)
    again = _import(org, model, Source.LOCAL, str(folder))
    assert again.status == VersionStatus.READY, again.status_detail


def test_what_an_import_killed_while_storing_wrote_is_left_named_for_the_sweep(
    org, model, settings, monkeypatch
):
    """A worker killed mid-upload runs no clean-up (here: the write raises, and the clean-up is skipped as
    a kill skips it); its row names what it wrote, and the sweep deletes it."""
    import hashlib
    from datetime import timedelta

    from portfolio.registry import pending_writes
    from portfolio.registry.pending_writes import PendingWrites
    from portfolio.registry.storage import LocalStore

    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "killed")
    (folder / "zz-last.txt").write_bytes(b"the file the worker died storing")
    put = LocalStore.put_blob

    def die_at_the_last(store, digest, source, size):
        if Path(source).name == "zz-last.txt":
            raise SystemExit("killed")
        put(store, digest, source, size)

    monkeypatch.setattr(LocalStore, "put_blob", die_at_the_last)
    monkeypatch.setattr(PendingWrites, "discard", lambda log, store: None)
    with pytest.raises(SystemExit):
        _import(org, model, Source.LOCAL, str(folder))
    row = PendingWrite.objects.get()
    version = ModelVersion.objects.get(model=model)
    assert row.owner == f"the import of version {version.pk}"
    assert len(row.written["blobs"]) == 5 and row.written["manifest"] is None
    from portfolio.registry.stores import default_store

    store = default_store()
    stored = [digest for digest in row.written["blobs"] if store.has_blob(digest)]
    assert len(stored) == 4
    assert hashlib.sha256(b"the file the worker died storing").hexdigest() not in stored
    assert pending_writes.sweep(timedelta(0)) == 1
    assert not any(store.has_blob(digest) for digest in stored)
