"""A model's small files (configs, tokenizer) are read with a cap: a file past it fails the import, the
job or the measurement with an error naming the file and the cap, and is never parsed.

Oversized files are written sparse (``truncate``): the checks measure before reading, so they cost no disk.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from portfolio.errors import Invalid
from portfolio.registry import jsonfiles, safety, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.jsonfiles import MAX_JSON_BYTES, MAX_VOCABULARY_BYTES, FileTooLarge, read_json
from portfolio.registry.models import Artifact, Model, ModelVersion
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder


def sparse(path: Path, size: int) -> Path:
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.truncate(size)
    return path


# --- The helper -------------------------------------------------------------------------------------------
def test_a_json_file_at_the_cap_is_read_and_one_byte_more_is_refused_unparsed(tmp_path, monkeypatch):
    at_cap = tmp_path / "config.json"
    at_cap.write_bytes(b'{"a": 1}' + b" " * (1000 - 8))
    assert read_json(at_cap, limit=1000) == {"a": 1}
    over = tmp_path / "tokenizer_config.json"
    over.write_bytes(b'{"a": 1}' + b" " * (1001 - 8))
    monkeypatch.setattr(jsonfiles.json, "loads", lambda *a, **k: pytest.fail("parsed a file past its cap"))
    with pytest.raises(FileTooLarge) as refused:
        read_json(over, limit=1000)
    assert str(refused.value) == (
        "tokenizer_config.json is 1,001 bytes; files of this kind are read whole into memory and capped at "
        "1,000 bytes."
    )


def test_a_file_that_grows_after_it_was_measured_is_still_cut_at_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_bytes(b"{}" + b" " * 2000)
    real_fstat = os.fstat
    monkeypatch.setattr(jsonfiles.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 2, 0, 0, 0)))
    with pytest.raises(FileTooLarge, match="config.json is over 1,000 bytes"):
        read_json(path, limit=1000)


def test_every_file_transformers_reads_whole_is_checked_against_its_cap(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    jsonfiles.refuse_oversized(folder)  # a real model's files pass
    sparse(folder / "tokenizer.json", MAX_VOCABULARY_BYTES)
    jsonfiles.refuse_oversized(folder)
    sparse(folder / "tokenizer.json", MAX_VOCABULARY_BYTES + 1)
    with pytest.raises(FileTooLarge, match=r"tokenizer.json is 134,217,729 bytes; .* capped at 134,217,728"):
        jsonfiles.refuse_oversized(folder)
    (folder / "tokenizer.json").unlink()
    sparse(folder / "o200k.tiktoken", MAX_VOCABULARY_BYTES + 1)
    with pytest.raises(FileTooLarge, match="o200k.tiktoken"):
        jsonfiles.refuse_oversized(folder)


# --- Imports ----------------------------------------------------------------------------------------------
@pytest.fixture
def model(db, org, team, imports):
    return services.create_model(actor=actor_for(org["engineer"]), name="ticket-router", owner_team=team)


def run_import(org, model, source, ref, **options) -> ModelVersion:
    return import_here(actor_for(org["engineer"]), model, source, ref, **options)


@pytest.mark.parametrize(
    ("name", "cap"),
    [
        ("config.json", MAX_JSON_BYTES),
        ("tokenizer_config.json", MAX_JSON_BYTES),
        ("generation_config.json", MAX_JSON_BYTES),
        ("tokenizer.json", MAX_VOCABULARY_BYTES),
    ],
)
def test_a_folder_with_a_file_read_whole_past_its_cap_fails_the_import_naming_the_file_and_the_cap(
    org, model, imports, name, cap
):
    folder = make_model_folder(imports / "tiny")
    sparse(folder / name, cap + 1)
    version = run_import(org, model, Source.LOCAL, str(folder))
    assert version.status == VersionStatus.FAILED
    assert version.status_detail.startswith(f"{name} is {cap + 1:,} bytes"), version.status_detail
    assert f"capped at {cap:,} bytes" in version.status_detail
    assert version.artifact is None and not Artifact.objects.exists()


def test_an_adapter_zip_whose_config_expands_past_the_cap_fails_the_import(org, model, imports, tmp_path):
    """A few MB of zip (compressed about 2:1, well inside the zip-bomb ratio) expanding into an
    ``adapter_config.json`` past the cap, as a hostile upload would."""
    base = run_import(org, model, Source.LOCAL, str(make_model_folder(imports / "base")))
    source = make_adapter_folder(tmp_path / "adapter")
    config = json.loads((source / "adapter_config.json").read_text())
    (source / "adapter_config.json").write_text(
        json.dumps({**config, "padding": os.urandom(MAX_JSON_BYTES // 2).hex()})
    )
    archive = tmp_path / "adapter.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in source.iterdir():
            out.write(path, f"my-adapter/{path.name}")
    with archive.open("rb") as handle:
        saved = services.save_upload(iter(lambda: handle.read(65536), b""), archive.name)
    with pytest.raises(Invalid, match="my-adapter/adapter_config.json is .* capped at"):
        safety.safe_extract(archive, tmp_path / "extracted")  # refused from its header, before writing it
    assert not list((tmp_path / "extracted").rglob("*"))
    version = run_import(org, model, Source.UPLOAD, archive.name, base_version=base, upload_path=saved)
    assert version.status == VersionStatus.FAILED
    assert version.status_detail.startswith("file: my-adapter/adapter_config.json is "), version.status_detail
    assert f"capped at {MAX_JSON_BYTES:,} bytes (16 MiB)" in version.status_detail
    assert version.artifact is None


# --- Training reads the same files through transformers ---------------------------------------------------
def test_training_and_scoring_refuse_a_base_whose_config_is_past_its_cap_before_loading_it(tmp_path):
    from training import evaluation, lora

    folder = make_model_folder(tmp_path / "base")
    sparse(folder / "config.json", MAX_JSON_BYTES + 1)
    with pytest.raises(FileTooLarge, match="config.json"):
        lora.train(
            base_dir=folder,
            output_dir=tmp_path / "out",
            train_rows=[],
            eval_rows=[],
            hp=lora.Hyperparameters(),
        )
    with pytest.raises(FileTooLarge, match="config.json"):
        evaluation.score(base_dir=folder, adapter_dir=None, rows=[])
    adapter = make_adapter_folder(tmp_path / "adapter")
    sparse(adapter / "adapter_config.json", MAX_JSON_BYTES + 1)
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileTooLarge, match="adapter_config.json"):
        evaluation.score(base_dir=folder, adapter_dir=adapter, rows=[])
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_past_its_cap_is_unavailable_for_measuring_rows(tmp_path, monkeypatch):
    from training import tokens

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    sparse(folder / "tokenizer.json", MAX_VOCABULARY_BYTES + 1)
    (folder / "tokenizer_config.json").write_text("{}")
    # The folder the artifact store would materialise: only what is in it matters here.
    monkeypatch.setattr(tokens, "tokenizer_folder", lambda version: folder)
    version = ModelVersion(model=Model(name="router"), number=3)
    with pytest.raises(tokens.TokenizerUnavailable, match="tokenizer.json is 134,217,729 bytes"):
        tokens.measure_for(version)
