"""Which replicas serve which adapter: an engine serves an adapter of its deployment where it loaded it at the
version attached now. A name removed and added again with another version is held at the old one until the
node agent reloads it (``adapter_sync``): meanwhile it is not routed to nor billed as the new one (the
gateway's routing), not counted by a rollout's canary check nor asked by its judge, not timed as the new
version's serving speed, and not shown as loaded. Said once here, as a query and in Python."""

from __future__ import annotations

from collections.abc import Mapping

from django.db.models import Q

from serving.choices import ReplicaState
from serving.models import DeploymentAdapter, Replica


def holding(name: str, version_id: int | None, via: str = "") -> Q:
    """Replicas (or ``via`` a relation to them) whose engine loaded the adapter ``name`` at this version."""
    return Q(
        **{f"{via}loaded_adapters__contains": [name], f"{via}adapter_versions__contains": {name: version_id}}
    )


def holds(replica: Replica, name: str, version_id: int | None) -> bool:
    """``holding``, of one replica already read."""
    return name in (replica.loaded_adapters or ()) and _at(_versions(replica), name, version_id)


def served(replica: Replica, attached: Mapping[str, int]) -> list[str]:
    """The names of ``attached`` ({name: version id}, its deployment's adapters) the replica serves."""
    versions = _versions(replica)
    return [n for n in replica.loaded_adapters or () if n in attached and _at(versions, n, attached[n])]


def shown(replica: Replica, attached: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """What a replica's page and API say of its adapters: those it serves, and those it holds at another version
    than the one attached (being reloaded); none where its engine does not run (a failed or stopped replica's
    last record)."""
    if replica.state not in ReplicaState.engine_running():
        return [], []
    serving = served(replica, attached)
    return serving, [n for n in replica.loaded_adapters or () if n in attached and n not in serving]


def attached_version(deployment_name: str, name: str) -> int | None:
    """The version of the adapter attached as ``name`` to the deployment now (None: none is)."""
    found = DeploymentAdapter.objects.filter(deployment__name=deployment_name, name=name)
    return found.values_list("version_id", flat=True).first()


def _at(versions: dict, name: str, version_id: int | None) -> bool:
    """Whether the replica's record of versions says ``name`` is held at ``version_id`` (a name with no entry
    is not held at any version, None included, as in ``holding``)."""
    return name in versions and versions[name] == version_id


def _versions(replica: Replica) -> dict:
    versions = replica.adapter_versions
    return versions if isinstance(versions, dict) else {}
