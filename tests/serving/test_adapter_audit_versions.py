"""The audit rows of an adapter added to or removed from a deployment name the version served under its name.
Found by review: the deployment's snapshot lists its adapters by name only, so an auditor could not tell which
version (maybe another team's, shared) had been served as ``tone``."""

from __future__ import annotations

import pytest

from serving import services
from tests.serving.conftest import audited, deploy, make_adapter

pytestmark = pytest.mark.django_db


def test_adding_and_removing_an_adapter_audits_the_version_served_under_its_name(
    org, owner, team, artifact, base_version, pool, node
):
    deployment = deploy(owner, team, base_version, pool, args={"enable_lora": True})
    adapter = make_adapter(org, team, artifact, base_version, model_name="support-tone")
    attached = services.add_adapter(actor=owner, deployment=deployment, adapter=adapter, name="tone")
    added = audited("deployment.adapter_add", deployment)
    assert added is not None and added.after is not None
    assert added.after["adapter"] == {"name": "tone", "version": "support-tone:v1"}
    assert added.after["adapters"] == ["tone"]
    services.remove_adapter(actor=owner, attached=attached)
    removed = audited("deployment.adapter_remove", deployment)
    assert removed is not None and removed.before is not None and removed.after is not None
    assert removed.before["adapter"] == {"name": "tone", "version": "support-tone:v1"}
    assert (removed.before["adapters"], removed.after["adapters"]) == (["tone"], [])
