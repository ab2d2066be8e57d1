"""A deployment or endpoint deleted while another change to it is under way: the change finds it gone and
answers "not found" (a 404 through the REST API and the web UI, never a 500), writing nothing. And the edits
that check a team's fallbacks run one at a time, so two of them at once cannot leave a fallback loop, nor a
fallback to an endpoint made composite or deleted meanwhile."""

from __future__ import annotations

import pytest

from portfolio.accounts import gate
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid, NotFound
from serving import services
from serving.models import Deployment, DeploymentAdapter, Endpoint
from tests.interleave import Pause, interleave
from tests.serving.conftest import deploy, make_adapter

pytestmark = pytest.mark.django_db

DEPLOYMENT_CHANGES = {
    "scale": lambda w, d: services.scale(actor=w["owner"], deployment=d, replicas=2),
    "stop": lambda w, d: services.scale(actor=w["owner"], deployment=d, replicas=0),
    "restart": lambda w, d: services.restart(actor=w["owner"], deployment=d),
    "update": lambda w, d: services.restart(actor=w["owner"], deployment=d, version=w["base_version"]),
    "update strategy": lambda w, d: services.set_update_strategy(
        actor=w["owner"], deployment=d, strategy="replace"
    ),
    "replace in place": lambda w, d: services.replace_in_place(actor=w["owner"], deployment=d),
    "add adapter": lambda w, d: services.add_adapter(actor=w["owner"], deployment=d, adapter=w["adapter"]),
    "delete": lambda w, d: services.delete_deployment(actor=w["owner"], deployment=d),
}


@pytest.fixture
def world(org, owner, team, pool, node, artifact, base_version, monkeypatch):
    from serving import tasks

    monkeypatch.setattr(tasks.reconcile_deployment_task, "delay", lambda *args: None)
    deployment = deploy(owner, team, base_version, pool, replicas=0)  # stopped: it may be deleted
    adapter = make_adapter(org, team, artifact, base_version)
    return {"owner": owner, "team": team, "pool": pool, "base_version": base_version,
            "deployment": deployment, "adapter": adapter}  # fmt: skip


def _paused_at_audit(monkeypatch) -> Pause:
    """The first transaction stops once it has checked and written everything, before it commits (a delete:
    with the row locked, just before it deletes it)."""
    pause = Pause()
    monkeypatch.setattr(audit, "record", pause.hook(audit.record))
    return pause


def _audit_rows(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", DEPLOYMENT_CHANGES)
def test_a_change_to_a_deployment_deleted_meanwhile_is_not_found(change, world, monkeypatch):
    """The change has passed its permission check (the deployment was there) and waits for the row while
    a delete deletes it: it then finds it gone, not found as at its lookup, instead of a 500."""
    deployment = world["deployment"]
    pause = _paused_at_audit(monkeypatch)

    deleted, changed = interleave(
        pause,
        lambda: services.delete_deployment(actor=world["owner"], deployment=deployment),
        lambda: DEPLOYMENT_CHANGES[change](world, deployment),
    )

    assert deleted.error is None
    assert isinstance(changed.error, NotFound) and "Deployment not found" in str(changed.error), changed.error
    assert _audit_rows("deployment.delete") == 1
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def _attached(world) -> DeploymentAdapter:
    services.add_adapter(actor=world["owner"], deployment=world["deployment"], adapter=world["adapter"])
    return DeploymentAdapter.objects.select_related("deployment").get(deployment=world["deployment"])


@pytest.mark.django_db(transaction=True)
def test_removing_an_adapter_of_a_deployment_being_deleted_is_not_found(world, monkeypatch):
    attached = _attached(world)
    pause = _paused_at_audit(monkeypatch)

    deleted, removed = interleave(
        pause,
        lambda: services.delete_deployment(actor=world["owner"], deployment=world["deployment"]),
        lambda: services.remove_adapter(actor=world["owner"], attached=attached),
    )

    assert deleted.error is None
    assert isinstance(removed.error, NotFound), removed.error
    assert _audit_rows("deployment.adapter_remove") == 0


def test_an_adapter_removed_twice_at_once_is_removed_and_audited_once(world):
    attached = _attached(world)
    services.remove_adapter(actor=world["owner"], attached=attached)  # the other request's, committed

    with pytest.raises(Invalid, match=f"serves no adapter '{attached.name}'"):
        services.remove_adapter(actor=world["owner"], attached=attached)

    assert _audit_rows("deployment.adapter_remove") == 1


def _endpoint(world, name: str, deployment: Deployment | None = None) -> Endpoint:
    routes = [{"deployment": (deployment or world["deployment"]).name}]
    return services.create_endpoint(actor=world["owner"], name=name, team=world["team"], routes=routes)


ENDPOINT_CHANGES = {
    "set routes": lambda w, e: services.set_routes(
        actor=w["owner"], endpoint=e, routes=[{"deployment": w["deployment"].name}]
    ),
    "configure": lambda w, e: services.configure_endpoint(
        actor=w["owner"], endpoint=e, kind="vote", config={"endpoint": "other", "n": 2}
    ),
    "delete": lambda w, e: services.delete_endpoint(actor=w["owner"], endpoint=e),
    "share": lambda w, e: services.share_endpoint(actor=w["owner"], endpoint=e, organisation=True),
    "unshare": lambda w, e: services.unshare_endpoint(actor=w["owner"], endpoint=e, organisation=True),
    "start rollout": lambda w, e: services.start_rollout(
        actor=w["owner"], endpoint=e, deployment=w["deployment"].name
    ),
    "abort rollout": lambda w, e: services.abort_rollout(actor=w["owner"], endpoint=e),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ENDPOINT_CHANGES)
def test_a_change_to_an_endpoint_deleted_meanwhile_is_not_found(change, world, monkeypatch):
    _endpoint(world, "other")
    endpoint = _endpoint(world, "support")
    pause = _paused_at_audit(monkeypatch)

    deleted, changed = interleave(
        pause,
        lambda: services.delete_endpoint(actor=world["owner"], endpoint=endpoint),
        lambda: ENDPOINT_CHANGES[change](world, endpoint),
    )

    assert deleted.error is None
    assert isinstance(changed.error, NotFound) and "Endpoint not found" in str(changed.error), changed.error
    assert _audit_rows("endpoint.delete") == 1
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()


def _deleted_after_check(monkeypatch, model, pk: int, *, checks: int) -> None:
    """The row is deleted, as by another request, right after the ``checks``-th permission check passed
    (the page's own, then the service's): between the service's check and its lock."""
    require, seen = gate.require, []

    def then_deleted(*args, **kwargs):
        require(*args, **kwargs)
        seen.append(args)
        if len(seen) == checks:
            model.objects.filter(pk=pk).delete()

    monkeypatch.setattr(gate, "require", then_deleted)


def test_the_rest_api_answers_404_in_its_error_shape_when_the_deployment_goes_during_a_scale(
    client, org, world, monkeypatch
):
    client.force_login(org["owner"])
    _deleted_after_check(monkeypatch, Deployment, world["deployment"].pk, checks=1)

    response = client.post(
        "/api/v1/deployments/support-bot/scale", {"replicas": 2}, content_type="application/json"
    )

    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


def test_the_rest_api_answers_404_when_the_endpoint_goes_during_a_route_edit(client, org, world, monkeypatch):
    endpoint = _endpoint(world, "support")
    client.force_login(org["owner"])
    _deleted_after_check(monkeypatch, Endpoint, endpoint.pk, checks=1)

    response = client.put(
        "/api/v1/endpoints/support/routes",
        {"routes": [{"deployment": "support-bot", "weight": 50}]},
        content_type="application/json",
    )

    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("page", ["scale", "restart", "stop"])
def test_the_deployment_page_answers_404_when_the_deployment_goes_during_a_button(
    page, client, org, world, monkeypatch
):
    client.force_login(org["owner"])
    _deleted_after_check(monkeypatch, Deployment, world["deployment"].pk, checks=2)

    response = client.post(f"/deployments/support-bot/{page}/", {"replicas": 2})

    assert response.status_code == 404


def test_the_endpoint_page_answers_404_when_the_endpoint_goes_during_a_config_edit(
    client, org, world, monkeypatch
):
    _endpoint(world, "other")
    endpoint = _endpoint(world, "support")
    client.force_login(org["owner"])
    _deleted_after_check(monkeypatch, Endpoint, endpoint.pk, checks=2)

    response = client.post("/endpoints/support/config/", {"kind": "plain", "config": ""})

    assert response.status_code == 404


@pytest.mark.parametrize("page", ["config", "routes"])
def test_the_endpoint_page_answers_404_when_the_endpoint_goes_before_a_form_that_did_not_parse(
    page, client, org, world, monkeypatch
):
    endpoint = _endpoint(world, "support")
    client.force_login(org["owner"])
    _deleted_after_check(monkeypatch, Endpoint, endpoint.pk, checks=1)

    response = client.post(f"/endpoints/support/{page}/", {"kind": "no-such-kind"})

    assert response.status_code == 404


# --- Two edits at once ---------------------------------------------------------------------------------
@pytest.fixture
def endpoints(world):
    """Plain endpoints ep-a, ep-b and ep-c of the team, ep-a on one deployment, the others on another (so
    that route edits of ep-a and ep-b wait on no common deployment: only the team's lock can order them)."""
    second = deploy(world["owner"], world["team"], world["base_version"], world["pool"], name="second-bot",
                    replicas=0)  # fmt: skip
    return {"a": _endpoint(world, "ep-a"), "b": _endpoint(world, "ep-b", second),
            "c": _endpoint(world, "ep-c", second), "second": second}  # fmt: skip


def _set_fallback(world, endpoint: Endpoint, fallback: Endpoint, deployment: Deployment):
    return services.set_routes(
        actor=world["owner"], endpoint=endpoint, routes=[{"deployment": deployment.name}], fallback=fallback
    )


@pytest.mark.django_db(transaction=True)
def test_two_fallbacks_set_at_once_from_either_end_make_no_loop(world, endpoints, monkeypatch):
    a, b = endpoints["a"], endpoints["b"]
    pause = _paused_at_audit(monkeypatch)

    one, two = interleave(
        pause,
        lambda: _set_fallback(world, a, b, world["deployment"]),
        lambda: _set_fallback(world, b, a, endpoints["second"]),
    )

    assert one.error is None
    assert isinstance(two.error, Invalid) and "fallback loop" in str(two.error), two.error
    assert (Endpoint.objects.get(pk=a.pk).fallback_id, Endpoint.objects.get(pk=b.pk).fallback_id) == (
        b.pk,
        None,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("edit", ["set routes", "create endpoint"])
def test_no_fallback_is_set_to_an_endpoint_being_made_composite(edit, world, endpoints, monkeypatch):
    b = endpoints["b"]
    pause = _paused_at_audit(monkeypatch)
    falls_back = {
        "set routes": lambda: _set_fallback(world, endpoints["a"], b, world["deployment"]),
        "create endpoint": lambda: services.create_endpoint(
            actor=world["owner"],
            name="ep-d",
            team=world["team"],
            routes=[{"deployment": world["deployment"].name}],
            fallback=b,
        ),  # fmt: skip
    }

    one, two = interleave(
        pause,
        lambda: services.configure_endpoint(
            actor=world["owner"], endpoint=b, kind="vote", config={"endpoint": "ep-c", "n": 2}
        ),
        falls_back[edit],
    )

    assert one.error is None
    assert isinstance(two.error, Invalid) and "a fallback is a plain endpoint" in str(two.error), two.error
    assert Endpoint.objects.get(pk=b.pk).kind == "vote"
    assert not Endpoint.objects.filter(fallback=b).exists()


@pytest.mark.django_db(transaction=True)
def test_no_fallback_is_set_to_an_endpoint_being_deleted(world, endpoints, monkeypatch):
    a, b = endpoints["a"], endpoints["b"]
    pause = _paused_at_audit(monkeypatch)

    one, two = interleave(
        pause,
        lambda: services.delete_endpoint(actor=world["owner"], endpoint=b),
        lambda: _set_fallback(world, a, b, world["deployment"]),
    )

    assert one.error is None
    assert isinstance(two.error, Invalid) and "fallback: no endpoint 'ep-b'" in str(two.error), two.error
    assert two.error.fields == {"fallback": ["Choose an endpoint that still exists."]}
    assert not Endpoint.objects.filter(pk=b.pk).exists()
    assert Endpoint.objects.get(pk=a.pk).fallback_id is None


@pytest.mark.django_db(transaction=True)
def test_no_route_is_added_to_a_deployment_being_deleted(world, endpoints, monkeypatch):
    spare = deploy(world["owner"], world["team"], world["base_version"], world["pool"], name="spare-bot",
                   replicas=0)  # fmt: skip
    pause = _paused_at_audit(monkeypatch)

    one, two = interleave(
        pause,
        lambda: services.delete_deployment(actor=world["owner"], deployment=spare),
        lambda: services.set_routes(
            actor=world["owner"], endpoint=endpoints["a"], routes=[{"deployment": "spare-bot"}]
        ),
    )

    assert one.error is None
    assert isinstance(two.error, Invalid) and "no deployment 'spare-bot'" in str(two.error), two.error
    assert not Deployment.objects.filter(pk=spare.pk).exists()
    assert [r.deployment_id for r in endpoints["a"].routes.all()] == [world["deployment"].pk]
