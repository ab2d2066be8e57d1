"""An alias removed while it is promoted, or removed twice at once: each waits for the other's row lock, so
neither fails with a 500 and the audit trail says what really happened."""

from __future__ import annotations

import pytest

from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.errors import NotFound
from portfolio.registry import aliases, services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import Alias, Artifact, Model, ModelVersion
from tests.conftest import actor_for
from tests.interleave import Pause, interleave

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(org, team) -> Model:
    """Model ``router`` with ready v1 and v2; v1 is staging."""
    model = services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    artifact = Artifact.objects.create(
        id="f" * 64, store_uri="file:///x", size_bytes=1, file_count=1, files=[]
    )
    for number in (1, 2):
        ModelVersion.objects.create(
            model=model, number=number, source=Source.LOCAL, artifact=artifact, status=VersionStatus.READY
        )
    services.promote(actor=actor_for(org["engineer"]), version=model.versions.get(number=1), alias="staging")
    return model


def test_a_removal_during_a_promotion_removes_what_the_promotion_set(org, model, monkeypatch):
    engineer = actor_for(org["engineer"])
    pause = Pause()
    monkeypatch.setattr(services, "PROMOTION_FOLLOWERS", [pause.hook(lambda *args: [])])
    promoted, removed = interleave(
        pause,
        lambda: services.promote(actor=engineer, version=model.versions.get(number=2), alias="staging"),
        lambda: aliases.remove_alias(actor=engineer, model=model, alias="staging"),
    )
    assert promoted.error is None and removed.error is None, (promoted.error, removed.error)
    assert not Alias.objects.exists()
    # Read under the promotion's lock: the version it pointed to when removed, not the one before.
    event = AuditEvent.objects.get(action="model.alias_remove")
    assert event.before == {"alias": "staging", "version": "router:v2"}


def test_a_promotion_during_a_removal_sets_the_alias_again(org, model, monkeypatch):
    engineer = actor_for(org["engineer"])
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))
    removed, promoted = interleave(
        pause,
        lambda: aliases.remove_alias(actor=engineer, model=model, alias="staging"),
        lambda: services.promote(actor=engineer, version=model.versions.get(number=2), alias="staging"),
    )
    assert promoted.error is None and removed.error is None, (promoted.error, removed.error)
    assert Alias.objects.get(model=model, name="staging").version.number == 2
    event = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert event is not None and event.before == {"alias": "staging", "version": None}


def test_the_second_of_two_removals_at_once_finds_nothing_to_remove(org, model, monkeypatch):
    engineer, owner = actor_for(org["engineer"]), actor_for(org["owner"])
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))
    first, second = interleave(
        pause,
        lambda: aliases.remove_alias(actor=engineer, model=model, alias="staging"),
        lambda: aliases.remove_alias(actor=owner, model=model, alias="staging"),
    )
    assert first.error is None and isinstance(second.error, NotFound), second.error
    assert AuditEvent.objects.filter(action="model.alias_remove").count() == 1
