"""An adapter's name reused on a deployment: replicas know their adapters by name only (the node agent loads
the names it has not loaded), so a name removed and added again with another version before they unloaded it
would be answered with the old weights while routed and billed as the new version. Refused until they have."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from serving import services
from serving.choices import ReplicaState
from serving.models import Replica
from tests.serving.conftest import deploy, make_adapter
from tests.serving.views.conftest import add_replica

pytestmark = pytest.mark.django_db


@pytest.fixture
def removed(org, owner, team, base_version, pool, node, artifact):
    """A deployment whose adapter ``tone`` (one version) was just removed; its replica still lists it, as
    until the node agent handles the poke; and another version to add under the same name."""
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    first = make_adapter(org, team, artifact, base_version, model_name="support-tone")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=first, name="tone")
    replica = add_replica(deployment, node, loaded_adapters=["tone"])
    services.remove_adapter(actor=owner, attached=attached)
    second = make_adapter(org, team, artifact, base_version, model_name="support-tone-b")
    return deployment, replica, second


def test_a_name_its_replicas_still_hold_is_refused(owner, removed):
    deployment, _, second = removed
    with pytest.raises(Conflict, match="'tone' was removed .* have not unloaded it yet; try again"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="tone")
    assert not deployment.adapters.exists()


def test_the_name_is_free_again_once_its_replicas_unloaded_it(owner, removed):
    deployment, replica, second = removed
    Replica.objects.filter(pk=replica.pk).update(loaded_adapters=[])  # the agent's sync, done
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="tone")
    assert (attached.name, attached.version_id) == ("tone", second.pk)


@pytest.mark.parametrize(
    "state", [ReplicaState.STOPPED, ReplicaState.FAILED, ReplicaState.BACKOFF, ReplicaState.PENDING]
)
def test_a_replica_running_no_engine_does_not_hold_the_name(owner, removed, state):
    """No engine runs there: the agent never syncs a stopped or failed one again (its stale list would block
    the name for good), and a crashed one (back-off) or one waiting for its files loads the deployment's
    adapters as they are then at its next start."""
    deployment, replica, second = removed
    Replica.objects.filter(pk=replica.pk).update(state=state)
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="tone")
    assert attached.version_id == second.pk


def test_a_name_still_served_is_refused_as_already_served(
    org, owner, team, base_version, node, artifact, removed
):
    deployment, _, second = removed
    services.add_adapter(actor=owner, deployment=deployment, adapter=second, name="other")
    add_replica(deployment, node, port=8102, loaded_adapters=["other"])
    third = make_adapter(org, team, artifact, base_version, model_name="support-tone-c")
    with pytest.raises(Conflict, match="is already served by support-bot"):
        services.add_adapter(actor=owner, deployment=deployment, adapter=third, name="other")
