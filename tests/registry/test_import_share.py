"""A team keeps at most ``IMPORTS_PER_TEAM`` imports from the Hub, a folder or a GGUF file queued or running:
each holds a long worker, which every team's merges, eval runs and ingests share, for as long as its download
and conversion take. Found by review: a team could queue any number. Adapter archives are bounded as uploads
waiting on disk instead (tests/registry/test_upload_share.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.errors import Conflict
from portfolio.registry import services
from portfolio.registry.choices import Source, VersionStatus
from portfolio.registry.models import ModelVersion
from tests.conftest import actor_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]


def post_import(client, model: str, ref: str):
    return client.post(
        f"/api/v1/models/{model}/imports", {"source": "hub", "ref": ref}, content_type="application/json"
    )


def importing(model: str) -> int:
    return ModelVersion.objects.filter(model__name=model, status=VersionStatus.IMPORTING).count()


@pytest.fixture
def router(org, team):
    return services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)


def test_a_teams_third_import_in_flight_answers_409_and_registers_no_version(client, org, router):
    client.force_login(org["engineer"])
    for number in range(2):
        assert post_import(client, "router", f"org/model-{number}").status_code == 202
    response = post_import(client, "router", "org/model-2")
    assert response.status_code == 409, response.content
    message = response.json()["error"]["message"]
    assert "has 2 import(s) queued or running, the most at once (2)" in message
    assert importing("router") == 2 and router.versions.count() == 2


def test_the_import_form_says_why_it_refused(client, org, router, settings):
    settings.IMPORTS_PER_TEAM = 1
    client.force_login(org["engineer"])
    assert post_import(client, "router", "org/first").status_code == 202
    page = client.post(
        reverse("model-import", kwargs={"name": "router"}), {"source": "hub", "ref": "org/second"}
    )
    assert page.status_code == 200 and "has 1 import(s) queued or running" in page.content.decode()
    assert router.versions.count() == 1


def test_imports_of_the_teams_other_models_count_and_another_teams_do_not(client, org, router, other_team):
    engineer = actor_for(org["engineer"])
    services.create_model(actor=engineer, name="classifier", owner_team=router.owner_team)
    client.force_login(org["engineer"])
    for number in range(2):
        post_import(client, "router", f"org/model-{number}")
    assert post_import(client, "classifier", "org/other").status_code == 409
    services.create_model(actor=actor_for(org["outsider"]), name="contracts", owner_team=other_team)
    client.force_login(org["outsider"])
    assert post_import(client, "contracts", "org/theirs").status_code == 202


def test_once_an_import_ends_the_team_may_import_again(client, org, router):
    client.force_login(org["engineer"])
    first = post_import(client, "router", "org/model-0").json()["id"]
    post_import(client, "router", "org/model-1")
    ModelVersion.objects.filter(pk=first).update(status=VersionStatus.FAILED)  # as a failed import leaves it
    assert post_import(client, "router", "org/model-2").status_code == 202
    assert importing("router") == 2


def test_an_import_run_by_its_caller_holds_no_worker_and_is_not_bounded(org, router, settings):
    """``enqueue=False``: `make run`'s demo import and the tests import where they are called."""
    settings.IMPORTS_PER_TEAM = 1
    engineer = actor_for(org["engineer"])
    services.start_import(actor=engineer, model=router, source=Source.HUB, ref="org/first")
    with pytest.raises(Conflict, match=r"has 1 import\(s\) queued or running"):
        services.start_import(actor=engineer, model=router, source=Source.HUB, ref="org/second")
    services.start_import(actor=engineer, model=router, source=Source.HUB, ref="org/here", enqueue=False)
    assert importing("router") == 2
