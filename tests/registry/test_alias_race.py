"""Two first promotions to one alias at once: the second's insert waits for the first's row and then failed
on the alias's unique constraint, a 500 (nothing locked an alias that did not exist yet). It is now refused
as a conflict to try again, and the first promotion stands."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from portfolio.errors import Conflict
from portfolio.registry import services
from portfolio.registry.models import Alias, Artifact
from tests.conftest import actor_for
from tests.serving.views.conftest import make_version

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_second_of_two_first_promotions_at_once_is_a_conflict(org, team, monkeypatch):
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="router", owner_team=team)
    artifact = Artifact.objects.create(
        id="a" * 64, store_uri="file:///a", size_bytes=1, file_count=1, files=[]
    )
    first, second = make_version(model, artifact, number=1), make_version(model, artifact, number=2)

    def hold(actor, version, previous, alias, endpoint):  # the first keeps its transaction open a while
        if version.pk == first.pk:
            time.sleep(1.5)
        return []

    monkeypatch.setattr(services, "PROMOTION_FOLLOWERS", [hold])
    outcome: dict = {}

    def promote(version) -> None:
        try:
            services.promote(actor=engineer, version=version, alias="staging")
            outcome[version.pk] = "promoted"
        except Exception as exc:
            outcome[version.pk] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=promote, args=(first,)),
        threading.Thread(target=promote, args=(second,)),
    ]
    threads[0].start()
    time.sleep(0.5)  # the first has inserted its alias row, uncommitted
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert outcome[first.pk] == "promoted"
    assert isinstance(outcome[second.pk], Conflict), outcome[second.pk]
    assert "just set by someone else" in outcome[second.pk].message
    assert Alias.objects.get(model=model, name="staging").version_id == first.pk
