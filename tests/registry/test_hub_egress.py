"""Hub imports in production stay in the building: with no HF_ENDPOINT (an internal mirror), no HF_HUB_OFFLINE
and no admin's PORTFOLIO_HUB_PUBLIC=true, an import from the Hub is refused when started (form error, API 400)
and nothing is queued; huggingface.co used to be asked the model's name, told the platform's Python and torch
versions in the user agent. The worker refuses one queued before. Outside production nothing changes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from django.urls import reverse

from portfolio.errors import Invalid
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]
REF = "acme-legal/contract-clause-extractor-v3"
LOOPBACK = ("localhost", "127.0.0.1", "::1", None)


@pytest.fixture
def hub(monkeypatch, settings):
    """huggingface_hub as production's compose file leaves it (the public Hub, online), and every name the
    process looks up that is not loopback: recorded and refused."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    settings.PRODUCTION, settings.HUB_PUBLIC = True, False
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def record(host, *args, **kwargs):
        if host in LOOPBACK:
            return real(host, *args, **kwargs)
        looked_up.append(host)
        raise socket.gaierror("stopped by the test")

    monkeypatch.setattr(socket, "getaddrinfo", record)
    return hf_constants, looked_up


def start(org, model, **options) -> ModelVersion:
    return services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.HUB, ref=REF, enqueue=False, **options
    )


def test_the_api_refuses_a_public_hub_import_in_production_and_queues_nothing(
    client, org, model, hub, django_capture_on_commit_callbacks
):
    client.force_login(org["engineer"])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            f"/api/v1/models/{model.name}/imports",
            {"source": "hub", "ref": REF},
            content_type="application/json",
        )
    assert response.status_code == 400, response.content
    message = response.json()["error"]["message"]
    assert "HF_ENDPOINT" in message and "PORTFOLIO_HUB_PUBLIC" in message
    assert callbacks == [] and not ModelVersion.objects.exists()
    assert hub[1] == []


def test_the_form_shows_the_refusal_and_registers_nothing(client, org, model, hub):
    client.force_login(org["engineer"])
    page = client.post(reverse("model-import", args=[model.name]), {"source": "hub", "ref": REF})
    assert b"PORTFOLIO_HUB_PUBLIC" in page.content and b"HF_ENDPOINT" in page.content
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    "endpoint", ["https://huggingface.co/", "https://HF.co", "https://www.huggingface.co"]
)
def test_an_hf_endpoint_naming_the_public_hub_is_no_mirror(org, model, hub, monkeypatch, endpoint):
    monkeypatch.setattr(hub[0], "ENDPOINT", endpoint)
    with pytest.raises(Invalid, match="PORTFOLIO_HUB_PUBLIC"):
        start(org, model)


def test_a_mirror_offline_mode_or_the_admins_consent_lets_it_start(org, model, hub, monkeypatch, settings):
    monkeypatch.setattr(hub[0], "ENDPOINT", "https://hub-mirror.corp.example")
    assert start(org, model).status == VersionStatus.IMPORTING
    monkeypatch.setattr(hub[0], "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(hub[0], "HF_HUB_OFFLINE", True)
    assert start(org, model).status == VersionStatus.IMPORTING
    monkeypatch.setattr(hub[0], "HF_HUB_OFFLINE", False)
    settings.HUB_PUBLIC = True
    assert start(org, model).status == VersionStatus.IMPORTING


def test_outside_production_hub_imports_start_as_before(org, model, hub, settings):
    settings.PRODUCTION = False
    assert start(org, model).status == VersionStatus.IMPORTING


def test_the_worker_refuses_an_import_queued_before_without_asking_the_hub(org, model, hub, settings):
    settings.PRODUCTION = False
    version = start(org, model)  # queued before the upgrade (or by a web process configured otherwise)
    settings.PRODUCTION = True
    import_version(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert (
        "PORTFOLIO_HUB_PUBLIC" in version.status_detail and "Nothing was downloaded" in version.status_detail
    )
    assert "huggingface.co" not in hub[1]


def test_the_image_turns_off_the_hubs_telemetry():
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    base = dockerfile.split("\nFROM ", 2)[1]  # the first stage's lines
    env_lines = [line for line in base.splitlines() if line.startswith("ENV ")]
    assert any("HF_HUB_DISABLE_TELEMETRY=1" in line and "DO_NOT_TRACK=1" in line for line in env_lines)
