"""A team keeps at most ``UPLOADS_PER_TEAM`` uploads waiting on disk for a long worker, adapter archives
still importing counted with its dataset ingests. Found by review: one engineer had 50 uploads of up to
2 GiB each accepted, every one kept in the uploads folder until one of two long workers took it up. The
datasets' side is tests/training/test_upload_share.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from portfolio.errors import Conflict
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder
from training import services as training
from training.choices import DatasetKind

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


@pytest.fixture
def archive(tmp_path) -> bytes:
    """A real adapter archive: an import that ends, ends ready."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in make_adapter_folder(tmp_path / "adapter").iterdir():
            zipped.write(path, path.name)
    return buffer.getvalue()


def base_of(user, team, name: str) -> ModelVersion:
    model = services.create_model(actor=actor_for(user), name=name, owner_team=team)
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / name)
    return import_here(actor_for(user), model, Source.LOCAL, str(folder))


@pytest.fixture
def base(org, team) -> ModelVersion:
    return base_of(org["engineer"], team, "router")


def post_upload(client, base: ModelVersion, archive: bytes):
    handle = io.BytesIO(archive)
    handle.name = "adapter.zip"
    return client.post(
        f"/api/v1/models/{base.model.name}/uploads", {"base_version_id": base.pk, "file": handle}
    )


def waiting_files() -> list[Path]:
    folder = Path(settings.DATA_DIR) / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


def importing() -> int:
    return ModelVersion.objects.filter(source=Source.UPLOAD, status=VersionStatus.IMPORTING).count()


def test_a_teams_fifth_waiting_adapter_upload_answers_409_and_leaves_nothing_behind(
    client, org, base, archive
):
    client.force_login(org["engineer"])
    for _ in range(4):
        assert post_upload(client, base, archive).status_code == 202
    response = post_upload(client, base, archive)
    assert response.status_code == 409, response.content
    message = response.json()["error"]["message"]
    assert "has 4 upload(s) waiting to be imported or ingested, the most at once (4)" in message
    assert importing() == 4 and len(waiting_files()) == 4


def test_the_upload_form_says_why_it_refused(client, org, base, archive, settings):
    settings.UPLOADS_PER_TEAM = 1
    client.force_login(org["engineer"])
    assert post_upload(client, base, archive).status_code == 202
    handle = io.BytesIO(archive)
    handle.name = "adapter.zip"
    url = reverse("adapter-upload", kwargs={"name": base.model.name})
    page = client.post(url, {"file": handle, "base_version": base.pk})
    assert page.status_code == 200 and "has 1 upload(s) waiting" in page.content.decode()
    assert importing() == 1 and len(waiting_files()) == 1


def test_another_teams_adapter_uploads_are_not_held_back(client, org, base, archive, other_team):
    client.force_login(org["engineer"])
    for _ in range(4):
        post_upload(client, base, archive)
    theirs = base_of(org["outsider"], other_team, "their-router")
    client.force_login(org["outsider"])
    assert post_upload(client, theirs, archive).status_code == 202


def test_once_an_import_ends_the_team_may_upload_again(client, org, base, archive):
    client.force_login(org["engineer"])
    first = post_upload(client, base, archive).json()["id"]
    for _ in range(3):
        post_upload(client, base, archive)
    import_version(first)  # as a worker would: imported, its archive deleted
    assert ModelVersion.objects.get(pk=first).status == VersionStatus.READY
    assert post_upload(client, base, archive).status_code == 202
    assert importing() == 4 and len(waiting_files()) == 4


def test_given_the_team_an_archive_is_refused_before_a_byte_is_written(org, base, archive, settings):
    settings.UPLOADS_PER_TEAM = 1
    engineer = actor_for(org["engineer"])
    saved = services.save_upload([archive], "adapter.zip", team=base.model.owner_team)
    services.start_import(
        actor=engineer, model=base.model, source=Source.UPLOAD, ref="adapter.zip", base_version=base,
        upload_path=saved,
    )  # fmt: skip

    def never_read():
        raise AssertionError("the refused archive's bytes were read")
        yield b""

    with pytest.raises(Conflict, match=r"has 1 upload\(s\) waiting"):
        services.save_upload(never_read(), "adapter.zip", team=base.model.owner_team)
    assert waiting_files() == [saved]


def test_the_teams_dataset_uploads_waiting_count_against_its_adapters(client, org, team, base, archive):
    """Training registers its count (``TrainingConfig.ready``)."""
    engineer = actor_for(org["engineer"])
    dataset = training.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)
    for _ in range(3):
        training.upload_version(actor=engineer, dataset=dataset, chunks=[b"{}\n"], filename="rows.jsonl")
    client.force_login(org["engineer"])
    assert post_upload(client, base, archive).status_code == 202
    response = post_upload(client, base, archive)
    assert response.status_code == 409 and "has 4 upload(s) waiting" in response.json()["error"]["message"]
    assert len(waiting_files()) == 4
