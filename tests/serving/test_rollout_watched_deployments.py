"""A deployment a rollout under way watches (the candidate, or one the baseline's traffic goes to) keeps its
version and engine arguments until the rollout ends: changed halfway, the canary's figures would be the old
one's and the new one promoted on them, or the canary compared with something else. A plain restart serves
the same and goes on."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving import services
from serving.choices import RolloutState
from serving.models import Deployment, DeploymentAdapter, Rollout
from tests.conftest import actor_for
from tests.serving.test_rollouts import start
from tests.serving.test_rollouts import world as world  # noqa: PLC0414 - the fixture, used by name
from tests.serving.views.conftest import make_version

pytestmark = pytest.mark.django_db


def restart(org, name: str, **change) -> Deployment:
    return services.restart(
        actor=actor_for(org["admin"]), deployment=Deployment.objects.get(name=name), **change
    )


def abort(org, world) -> None:
    services.abort_rollout(actor=actor_for(org["engineer"]), endpoint=world)


def test_the_canarys_deployment_keeps_its_version_while_watched(client, org, world):
    assert start(client, org).status_code == 201
    before = Deployment.objects.get(name="support-next")
    v3 = make_version(before.version.model, before.version.artifact, number=3)
    with pytest.raises(Conflict, match="candidate of the rollout under way on support: abort the rollout"):
        restart(org, "support-next", version=v3)
    after = Deployment.objects.get(name="support-next")
    assert (after.version_id, after.generation) == (before.version_id, before.generation)
    abort(org, world)
    assert restart(org, "support-next", version=v3).version_id == v3.pk


def test_the_baselines_deployment_keeps_its_engine_arguments_while_watched(client, org, world):
    assert start(client, org).status_code == 201
    before = Deployment.objects.get(name="support-bot")
    with pytest.raises(Conflict, match="support-bot is in the baseline of the rollout under way"):
        restart(org, "support-bot", args={"max_model_len": 1024})
    after = Deployment.objects.get(name="support-bot")
    assert (after.engine_args, after.generation) == (before.engine_args, before.generation)
    Rollout.objects.update(state=RolloutState.PROMOTED)  # ended: the change is the operator's again
    assert restart(org, "support-bot", args={"max_model_len": 1024}).engine_args == {"max_model_len": 1024}


def test_a_plain_restart_of_a_watched_deployment_goes_on(client, org, world):
    assert start(client, org).status_code == 201
    generation = Deployment.objects.get(name="support-next").generation
    assert restart(org, "support-next").generation == generation + 1


def test_an_adapter_that_turns_lora_on_waits_for_the_rollout(client, org, world):
    """Turning LoRA on rolls every replica with new engine arguments: the candidate changed halfway too."""
    assert start(client, org).status_code == 201
    next_ = Deployment.objects.get(name="support-next")
    adapter = make_version(
        next_.version.model, next_.version.artifact, number=7, kind="adapter", base_version=next_.version
    )
    with pytest.raises(Conflict, match="abort the rollout first"):
        services.add_adapter(actor=actor_for(org["admin"]), deployment=next_, adapter=adapter)
    assert not DeploymentAdapter.objects.exists()
    assert Deployment.objects.get(name="support-next").generation == next_.generation
