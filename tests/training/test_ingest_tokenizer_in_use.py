"""A model version an upload measures its rows with (``DatasetIngest.tokenizer_version``) is in use while the
upload is queued or running: archiving it, or deleting its files, is refused naming the upload. Files lost
anyway (deleted behind the checks, or damaged) fail the upload saying why, not as an internal error.

Found by review: the in-use checks ignored ingests, so a version could be archived and its files deleted
under a queued upload, which then ended "errored" with "Internal error during the ingest (DoesNotExist)".
"""

from __future__ import annotations

import json

import pytest

from portfolio.errors import Conflict, Invalid
from portfolio.registry import services as registry
from portfolio.registry.choices import Health, Source, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.stores import default_store
from tests.registry.conftest import ready_base
from tests.training.conftest import jsonl, stored, tickets
from training import ingest, services, splitting
from training.choices import JobStatus
from training.models import DatasetIngest

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokenizer(engineer, team, tmp_path) -> ModelVersion:
    """A ready base version holding a tiny word-level tokenizer (and a config), stored for real."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "billing": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(folder)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    return ready_base(engineer, team, "words", stored(folder), source=Source.HUB, context_length=64)


def _queued(engineer, chat_set, tokenizer) -> DatasetIngest:
    return services.upload_version(
        actor=engineer,
        dataset=chat_set,
        chunks=[jsonl(*tickets(20))],
        filename="rows.jsonl",
        base_version=tokenizer,
        enqueue=False,
    )


def _while_splitting(monkeypatch, meanwhile) -> None:
    """Run ``meanwhile`` once the upload's rows are read, before they are measured."""
    finish = splitting.Splitter.finish

    def finishing(self):
        meanwhile()
        return finish(self)

    monkeypatch.setattr(splitting.Splitter, "finish", finishing)


def test_a_version_a_queued_upload_measures_with_cannot_be_archived(engineer, chat_set, tokenizer):
    pending = _queued(engineer, chat_set, tokenizer)
    with pytest.raises(Conflict, match=f"upload #{pending.pk} is measuring rows with it"):
        registry.archive_version(actor=engineer, version=tokenizer)
    assert ModelVersion.objects.get(pk=tokenizer.pk).status == VersionStatus.READY


def test_a_running_upload_keeps_its_tokenizer_until_it_ends(engineer, chat_set, tokenizer, monkeypatch):
    pending = _queued(engineer, chat_set, tokenizer)
    refusals = []

    def archive():
        with pytest.raises(Conflict) as refused:
            registry.archive_version(actor=engineer, version=tokenizer)
        refusals.append(refused.value.message)

    _while_splitting(monkeypatch, archive)
    done = ingest.run(pending.pk)
    assert done.status == JobStatus.SUCCEEDED, done.status_detail
    assert f"upload #{pending.pk} is measuring rows with it" in refusals[0]
    assert done.version.stats["lengths"]["unit"] == "tokens"
    registry.archive_version(actor=engineer, version=tokenizer)  # the upload has ended: free to go


def test_the_files_of_an_archived_version_an_upload_measures_with_are_kept(engineer, chat_set, tokenizer):
    """Archived before the upload's row was written (the upload checked the version first, then stored
    the file): its files stay while the upload is queued."""
    pending = _queued(engineer, chat_set, tokenizer)
    ModelVersion.objects.filter(pk=tokenizer.pk).update(status=VersionStatus.ARCHIVED)
    with pytest.raises(Conflict, match=f"upload #{pending.pk} is measuring rows with it"):
        registry.purge_version(actor=engineer, version=tokenizer)
    assert ModelVersion.objects.get(pk=tokenizer.pk).artifact_id is not None


def test_tokenizer_files_deleted_under_a_running_upload_fail_it_saying_so(
    engineer, chat_set, tokenizer, monkeypatch
):
    pending = _queued(engineer, chat_set, tokenizer)

    def purged_behind_the_checks():
        ModelVersion.objects.filter(pk=tokenizer.pk).update(status=VersionStatus.ARCHIVED, artifact=None)
        Artifact.objects.filter(pk=tokenizer.artifact_id).delete()

    _while_splitting(monkeypatch, purged_behind_the_checks)
    with pytest.raises(Invalid, match="were deleted"):
        ingest.run(pending.pk)
    done = DatasetIngest.objects.get(pk=pending.pk)
    assert done.status == JobStatus.FAILED
    assert done.status_detail == "base_version: The stored files of words:v1 were deleted."


def test_damaged_tokenizer_files_fail_the_upload_and_mark_the_artifact_corrupt(
    engineer, chat_set, tokenizer, monkeypatch
):
    pending = _queued(engineer, chat_set, tokenizer)
    blob = default_store().blob_path(tokenizer.artifact.manifest().get("tokenizer.json").sha256)
    _while_splitting(monkeypatch, blob.unlink)
    with pytest.raises(Invalid, match="tokenizer.json"):
        ingest.run(pending.pk)
    done = DatasetIngest.objects.get(pk=pending.pk)
    assert done.status == JobStatus.FAILED
    assert "The stored tokenizer files of words:v1 are damaged" in done.status_detail
    assert Artifact.objects.get(pk=tokenizer.artifact_id).health == Health.CORRUPT


def test_a_version_archived_while_the_upload_is_saved_is_refused_and_nothing_is_left(
    engineer, chat_set, tokenizer, monkeypatch
):
    """The version is checked before the upload is saved and locked when the ingest's row is written: one
    archived in between (nothing counted the upload yet) is refused, the saved file removed."""
    saved = []
    save = services._save_upload

    def archived_meanwhile(chunks):
        registry.archive_version(actor=engineer, version=tokenizer)
        saved.append(save(chunks))
        return saved[-1]

    monkeypatch.setattr(services, "_save_upload", archived_meanwhile)
    with pytest.raises(Invalid, match="words:v1 is archived; choose a ready version"):
        _queued(engineer, chat_set, tokenizer)
    assert not DatasetIngest.objects.exists() and not saved[0][0].exists()
