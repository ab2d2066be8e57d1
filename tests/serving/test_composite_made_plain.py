"""An endpoint created as a router, cascade or vote can be made plain: its routes given with the kind, set
in the same change and audited with it (it has none to go back to, and a composite's routes cannot be set
on their own); one made composite from plain goes back to the routes it kept."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from serving import services
from serving.forms.endpoints import CompositeForm
from serving.models import Endpoint
from tests.conftest import actor_for
from tests.serving.conftest import audited
from tests.serving.test_api import world as world  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db

CASCADE = {"small": "small", "large": "large", "threshold": -1.0}


@pytest.fixture
def cascade(owner, team, deployment) -> Endpoint:
    """A cascade created as one (no routes), over two plain endpoints on the deployment."""
    for name in ("small", "large"):
        services.create_endpoint(actor=owner, name=name, team=team, routes=[{"deployment": deployment.name}])
    return services.create_endpoint(
        actor=owner, name="smart", team=team, routes=[], kind="cascade", config=CASCADE
    )


def test_a_cascade_created_as_one_is_made_plain_with_the_routes_given(owner, cascade, deployment):
    routes = [{"deployment": deployment.name, "adapter": None, "weight": 70}]
    made = services.configure_endpoint(actor=owner, endpoint=cascade, kind="plain", routes=routes)
    made.refresh_from_db()
    assert (made.kind, made.config, made.route_list()) == ("plain", {}, routes)
    event = audited("endpoint.configure", made)
    assert event is not None and event.before is not None and event.after is not None
    assert (event.before["kind"], event.before["routes"]) == ("cascade", [])
    assert (event.after["kind"], event.after["routes"]) == ("plain", routes), "one audit row for both"


def test_made_plain_without_routes_is_refused_changing_nothing(owner, cascade, deployment):
    audited_before = AuditEvent.objects.count()
    with pytest.raises(Invalid, match="routes: a plain endpoint needs routes"):
        services.configure_endpoint(actor=owner, endpoint=cascade, kind="plain")
    with pytest.raises(Invalid, match="no deployment 'gone' visible to you"):
        services.configure_endpoint(
            actor=owner, endpoint=cascade, kind="plain", routes=[{"deployment": "gone"}]
        )
    cascade.refresh_from_db()
    assert (cascade.kind, cascade.route_list()) == ("cascade", [])
    assert AuditEvent.objects.count() == audited_before


def test_routes_are_given_to_a_composite_only_to_make_it_plain(owner, cascade, deployment):
    with pytest.raises(Invalid, match="give routes only to make it plain"):
        services.configure_endpoint(
            actor=owner,
            endpoint=cascade,
            kind="cascade",
            config=CASCADE,
            routes=[{"deployment": deployment.name}],
        )
    assert not cascade.routes.exists()


def test_routes_given_in_place_of_those_kept(owner, team, deployment, cascade):
    spare = services.create_endpoint(
        actor=owner, name="spare", team=team, routes=[{"deployment": deployment.name}]
    )
    services.configure_endpoint(actor=owner, endpoint=spare, kind="cascade", config=CASCADE)
    services.configure_endpoint(
        actor=owner, endpoint=spare, kind="plain", routes=[{"deployment": deployment.name, "weight": 5}]
    )
    assert [r["weight"] for r in Endpoint.objects.get(name="spare").route_list()] == [5]


def test_the_api_makes_a_cascade_created_as_one_plain(client, org, team, world):
    engineer = actor_for(org["engineer"])
    for name in ("support-small", "support-large"):
        services.create_endpoint(actor=engineer, name=name, team=team, routes=[{"deployment": "support-bot"}])
    config = {"small": "support-small", "large": "support-large", "threshold": -0.5}
    services.create_endpoint(
        actor=engineer, name="support-smart", team=team, routes=[], kind="cascade", config=config
    )
    client.force_login(org["engineer"])
    url = "/api/v1/endpoints/support-smart/config"
    refused = client.put(url, {"kind": "plain"}, content_type="application/json")
    assert refused.status_code == 400 and "needs routes" in refused.json()["error"]["message"]
    routes = [{"deployment": "support-bot", "adapter": None, "weight": 100}]
    made = client.put(url, {"kind": "plain", "routes": routes}, content_type="application/json")
    assert made.status_code == 200, made.content
    assert (made.json()["kind"], made.json()["config"], made.json()["routes"]) == ("plain", {}, routes)


def test_the_page_form_reads_the_routes_as_the_service_takes_them(owner, cascade, deployment):
    given = f'[{{"deployment": "{deployment.name}"}}]'
    form = CompositeForm({"kind": "plain", "config": "", "routes": given}, endpoint=cascade)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["routes"] == [{"deployment": deployment.name}]
    empty = CompositeForm({"kind": "plain", "config": "", "routes": ""}, endpoint=cascade)
    assert empty.is_valid() and empty.cleaned_data["routes"] is None, "keep the routes it has"
    for bad in ('{"deployment": "x"}', "[1, 2]"):
        refused = CompositeForm({"kind": "plain", "config": "", "routes": bad}, endpoint=cascade)
        assert not refused.is_valid() and "A list of routes" in str(refused.errors["routes"])
