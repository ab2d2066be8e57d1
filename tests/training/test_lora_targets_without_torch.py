"""The web server's image has no torch (it is built without the train extra): the layers LoRA may adapt in a
base are stored with it at import, where torch is (the import worker), and the web server checks a job's
target modules and previews the layers from them. A base without them is said to be unchecked, in the
log once and on the form, never shown as if its layers were known."""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections import OrderedDict

import pytest
from django.urls import reverse

from portfolio.errors import Invalid
from portfolio.registry import services as registry
from portfolio.registry.choices import Source
from portfolio.registry.inspection import LORA_LAYERS
from portfolio.registry.models import ModelVersion
from portfolio.registry.reinspection import read_missing_architectures
from tests.registry.conftest import import_here
from tests.training import tiny_configs
from tests.training.test_lora_targets import FAMILIES, moe_base, read, start  # noqa: F401
from training import architectures
from training.lora_targets import facts_of
from training.models import FineTuneJob

ATTENTION = "q_proj, k_proj, v_proj, o_proj"


@pytest.fixture
def without_torch(monkeypatch):
    """This process as the web server's: torch and transformers cannot be imported, nothing read before."""

    def web_server():
        monkeypatch.setitem(sys.modules, "torch", None)
        monkeypatch.setitem(sys.modules, "transformers", None)
        monkeypatch.setattr(architectures, "_cache", OrderedDict())
        monkeypatch.setattr(architectures, "_warned_without_torch", False)

    return web_server


@pytest.fixture
def imported_moe(settings, tmp_path, engineer, team) -> ModelVersion:
    """A tiny mixture of experts imported from a server folder, here where torch is installed (the import
    worker's image): its config.json and a safetensors file of one weight."""
    root = (tmp_path / "imports").resolve()
    settings.IMPORT_ROOTS = [root]
    folder = root / "tiny-moe"
    tiny_configs.config("qwen3_moe").save_pretrained(folder)
    # A chat template: its job trains on chat rows.
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    model = registry.create_model(actor=engineer, name="tiny-moe", owner_team=team)
    version = import_here(engineer, model, Source.LOCAL, str(folder))
    assert version.status == "ready", version.status_detail
    return version


@pytest.mark.parametrize("config", [family[0] for family in FAMILIES])
def test_the_stored_layers_of_every_family_are_the_layers_read_from_its_config(config, tmp_path):
    architecture = read(tiny_configs.config(config), tmp_path)
    stored = json.loads(json.dumps(facts_of(architecture)))  # as the database gives them back
    assert architectures.from_facts(stored) == architecture


@pytest.mark.django_db
def test_a_layer_the_base_lacks_is_refused_by_the_web_server_from_what_its_import_stored(
    imported_moe, engineer, dataset_version, cpu_pool, enqueued, without_torch, client, org, caplog
):
    assert imported_moe.architecture_facts[LORA_LAYERS]["family"] == "moe"
    without_torch()
    with pytest.raises(Invalid) as refused:
        start(engineer, imported_moe, dataset_version, cpu_pool, target_modules=["q_proj", "gate_proj"])
    assert refused.value.message.startswith(
        "hyperparameters.target_modules: 'gate_proj' is not a layer LoRA can adapt in"
    )
    assert "experts.gate_up_proj (experts)" in refused.value.message
    with pytest.raises(Invalid, match="has no state layers to adapt"):
        start(engineer, imported_moe, dataset_version, cpu_pool, lora_targets="attention+state")
    job = start(
        engineer, imported_moe, dataset_version, cpu_pool, target_modules=["q_proj", "experts.down_proj"]
    )
    assert job.hyperparameters["target_modules"] == ["q_proj", "experts.down_proj"]
    client.force_login(org["engineer"])
    preview = client.get(
        reverse("job-targets"), {"base_version": imported_moe.pk, "lora_targets": "attention+experts"}
    ).content.decode()
    assert "is a mixture of experts model" in preview
    assert f"{ATTENTION}, experts.gate_up_proj, experts.down_proj</code>" in preview
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name == architectures.__name__
    ]


@pytest.mark.django_db
def test_a_base_without_stored_layers_is_said_to_be_unchecked_where_torch_is_not_installed(
    moe_base,  # noqa: F811
    engineer,
    dataset_version,
    cpu_pool,
    enqueued,
    without_torch,
    client,
    org,
    caplog,
):
    without_torch()
    caplog.set_level(logging.WARNING, logger=architectures.__name__)
    # Not refused (it cannot be checked): the run on a node, which has torch, refuses it.
    job = start(engineer, moe_base, dataset_version, cpu_pool, target_modules=["q_proj", "gate_proj"])
    assert job.hyperparameters["target_modules"] == ["q_proj", "gate_proj"]
    assert architectures.preview(moe_base, 60) == {
        "known": False,
        "chosen": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    client.force_login(org["engineer"])
    preview = client.get(reverse("job-targets"), {"base_version": moe_base.pk}).content.decode()
    assert "names are not checked before the run" in preview and "mixture of experts" not in preview
    (warning,) = [r for r in caplog.records if r.name == architectures.__name__]
    assert "tiny-moe" in warning.getMessage() and "not checked" in warning.getMessage()
    assert "read_architectures" in warning.getMessage()
    assert FineTuneJob.objects.count() == 1


@pytest.mark.django_db
def test_read_architectures_gives_a_base_imported_before_its_layers_only_where_torch_is_installed(
    imported_moe, without_torch, monkeypatch
):
    from portfolio.audit.models import AuditEvent

    layers = imported_moe.architecture_facts.pop(LORA_LAYERS)
    ModelVersion.objects.filter(pk=imported_moe.pk).update(architecture_facts=imported_moe.architecture_facts)
    lines: list[str] = []
    with monkeypatch.context() as web_server:
        web_server.setitem(sys.modules, "torch", None)  # `portfolio migrate` in the web server's image
        assert read_missing_architectures(log=lines.append) == 0
    assert lines == [
        "layers LoRA may adapt not read: torch is not installed here (run `portfolio manage "
        "read_architectures` where the train extra is, the worker's image)"
    ]
    imported_moe.refresh_from_db()
    assert LORA_LAYERS not in imported_moe.architecture_facts
    assert read_missing_architectures(log=lines.append) == 1  # where torch is: the worker's image
    imported_moe.refresh_from_db()
    assert imported_moe.architecture_facts[LORA_LAYERS] == layers
    assert AuditEvent.objects.filter(action="model_version.architecture").count() == 1
    assert read_missing_architectures(log=lines.append) == 0
