"""Deleting an endpoint that is in use is refused, as for one others fall back to: one a task names as its
production endpoint (its own team's or, shared, another team's: the task would lose it quietly, with no audit
row for it), and one with a canary under way (the rollout would go with it, never aborted). Refused under the
lock the delete takes, so a canary started while the delete waits for it is seen; the REST API answers 409 and
the web UI's button says why."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.audit import services as audit
from portfolio.errors import Conflict
from serving import services
from serving.choices import RolloutState
from serving.models import Endpoint, Rollout
from tests.conftest import actor_for
from tests.interleave import Pause, interleave
from tests.serving.conftest import audited, deploy
from training.evals import catalogue, portfolio
from training.evals.models import Task

pytestmark = pytest.mark.django_db

IN_PRODUCTION = (
    "support is the production endpoint of Ticket routing; choose another production endpoint for it"
)


def plain(owner, team, deployment, name: str = "support") -> Endpoint:
    return services.create_endpoint(
        actor=owner, name=name, team=team, routes=[{"deployment": deployment.name}]
    )


def task_of(actor, team, name: str = "Ticket routing") -> Task:
    return catalogue.create_task(actor=actor, owner_team=team, name=name, kind="classification")


def refused(owner, endpoint: Endpoint, match: str) -> None:
    with pytest.raises(Conflict, match=match):
        services.delete_endpoint(actor=owner, endpoint=endpoint)
    assert Endpoint.objects.filter(pk=endpoint.pk).exists() and audited("endpoint.delete", endpoint) is None


# --- A task's production endpoint ----------------------------------------------------------------------
def test_an_endpoint_a_task_serves_in_production_is_deleted_only_once_the_task_names_another(
    owner, team, deployment
):
    support = plain(owner, team, deployment)
    general = plain(owner, team, deployment, name="general")
    task = portfolio.set_production_endpoint(actor=owner, task=task_of(owner, team), endpoint=support)

    refused(owner, support, rf"{IN_PRODUCTION} first, then delete it\.")
    task.refresh_from_db()
    assert task.production_endpoint_id == support.pk

    portfolio.set_production_endpoint(actor=owner, task=task, endpoint=general)
    services.delete_endpoint(actor=owner, endpoint=support)
    assert not Endpoint.objects.filter(pk=support.pk).exists()
    assert audited("endpoint.delete", support).before["name"] == "support"


def test_several_tasks_are_named_and_another_teams_are_counted_not_named(
    org, owner, team, other_team, deployment
):
    support = plain(owner, team, deployment)
    services.share_endpoint(actor=owner, endpoint=support, team=other_team)
    outsider = actor_for(org["outsider"])  # owner of other_team
    theirs = task_of(outsider, other_team, name="Contract review")
    portfolio.set_production_endpoint(actor=outsider, task=theirs, endpoint=support)

    refused(owner, support, r"of 1 task of another team; choose another production endpoint for it first")
    for name in ("Ticket routing", "Auto reply"):
        portfolio.set_production_endpoint(actor=owner, task=task_of(owner, team, name=name), endpoint=support)
    with pytest.raises(Conflict) as refusal:
        services.delete_endpoint(actor=owner, endpoint=support)
    assert refusal.value.message == (
        "support is the production endpoint of Auto reply, Ticket routing, 1 task of another team; "
        "choose another production endpoint for them first, then delete it."
    )
    assert "Contract review" not in refusal.value.message

    for task in Task.objects.all():
        actor = outsider if task.owner_team_id == other_team.pk else owner
        portfolio.set_production_endpoint(actor=actor, task=task, endpoint=None)
    services.delete_endpoint(actor=owner, endpoint=support)
    assert not Endpoint.objects.filter(pk=support.pk).exists()


# --- A canary under way -----------------------------------------------------------------------------------
def test_an_endpoint_with_a_canary_under_way_is_deleted_only_once_the_rollout_has_ended(
    owner, team, base_version, pool, deployment
):
    support = plain(owner, team, deployment)
    deploy(owner, team, base_version, pool, name="candidate")
    rollout = services.start_rollout(actor=owner, endpoint=support, deployment="candidate")

    refused(
        owner,
        support,
        r"support has a rollout under way \(a canary of candidate\); let it finish or abort it first, "
        r"then delete it\.",
    )
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.CANARY

    services.abort_rollout(actor=owner, endpoint=support, reason="not needed")
    services.delete_endpoint(actor=owner, endpoint=support)
    assert not Endpoint.objects.filter(pk=support.pk).exists() and not Rollout.objects.exists()
    assert audited("endpoint.delete", support) is not None


# --- Under the delete's lock ------------------------------------------------------------------------------
@pytest.fixture
def paused(monkeypatch) -> Pause:
    """The first transaction stops once it has written everything, before it commits."""
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))
    return pause


@pytest.mark.django_db(transaction=True)
def test_a_canary_started_while_the_delete_waits_is_seen(owner, team, base_version, pool, deployment, paused):
    support = plain(owner, team, deployment)
    deploy(owner, team, base_version, pool, name="candidate")

    started, deleted = interleave(
        paused,
        lambda: services.start_rollout(actor=owner, endpoint=support, deployment="candidate"),
        lambda: services.delete_endpoint(actor=owner, endpoint=support),
    )

    assert started.error is None
    assert isinstance(deleted.error, Conflict) and "rollout under way" in deleted.error.message, deleted.error
    assert Rollout.objects.get(endpoint=support).state == RolloutState.CANARY


# --- How the REST API and the web UI show the refusal ------------------------------------------------------
def test_the_api_answers_409_and_the_button_says_why(client, org, owner, team, deployment):
    support = plain(owner, team, deployment)
    portfolio.set_production_endpoint(actor=owner, task=task_of(owner, team), endpoint=support)
    client.force_login(org["owner"])

    response = client.delete("/api/v1/endpoints/support")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert IN_PRODUCTION in response.json()["error"]["message"]

    response = client.post(reverse("endpoint-delete", kwargs={"name": "support"}), follow=True)
    assert response.redirect_chain[-1][0] == reverse("endpoint-detail", kwargs={"name": "support"})
    assert any(IN_PRODUCTION in str(message) for message in response.context["messages"])
    assert Endpoint.objects.filter(pk=support.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_task_named_to_an_endpoint_being_deleted_is_told_it_is_gone(owner, team, deployment, paused):
    """Naming the endpoint did not wait for the delete's lock: it committed after the delete and failed its
    foreign key check there (an IntegrityError, a 500)."""
    from portfolio.errors import NotFound

    support = plain(owner, team, deployment)
    task = task_of(owner, team)

    deleted, named = interleave(
        paused,
        lambda: services.delete_endpoint(actor=owner, endpoint=support),
        lambda: portfolio.set_production_endpoint(actor=owner, task=task, endpoint=support),
    )

    assert deleted.error is None
    assert isinstance(named.error, NotFound), named.error
    task.refresh_from_db()
    assert task.production_endpoint_id is None
