"""Endpoints: the route editor with its weights and fallback, the new-endpoint form, and who sees what."""

from __future__ import annotations

import pytest
from django.urls import reverse

from serving import services
from serving.models import Endpoint
from tests.serving.views.conftest import audited

pytestmark = pytest.mark.django_db


def routes_data(*rows: tuple[str, str, int], initial: int = 0, **extra) -> dict:
    data = {"routes-TOTAL_FORMS": str(len(rows)), "routes-INITIAL_FORMS": str(initial)}
    for index, (deployment, adapter, weight) in enumerate(rows):
        data |= {
            f"routes-{index}-deployment": deployment,
            f"routes-{index}-adapter": adapter,
            f"routes-{index}-weight": str(weight),
        }
    return data | extra


def test_the_endpoint_editor_saves_weights(signed_in, org, owner, deployment, endpoint, adapter_version):
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="tone")
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 90), ("support-bot", "tone", 10), ("", "", 100), initial=1),
    )
    assert response.status_code == 302
    routes = {
        (r.adapter.name if r.adapter else None): r.weight for r in endpoint.routes.select_related("adapter")
    }
    assert routes == {None: 90, "tone": 10}
    event = audited("endpoint.routes", endpoint)
    assert event is not None
    assert event.before["routes"] == [{"deployment": "support-bot", "adapter": None, "weight": 100}]

    page = client.get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "90.0%" in page and "10.0%" in page
    assert '"model": "support"' in page


def test_a_removed_row_is_dropped_and_an_empty_editor_is_refused(signed_in, org, endpoint):
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), initial=1, **{"routes-0-DELETE": "on"}),
    )
    assert response.status_code == 200
    assert "Add at least one route" in response.content.decode()
    assert endpoint.routes.count() == 1


def test_a_fallback_loop_is_refused_on_the_form(signed_in, org, owner, team, endpoint):
    other = services.create_endpoint(
        actor=owner, name="support-b", team=team, routes=[{"deployment": "support-bot"}], fallback=endpoint
    )
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), fallback=other.pk),
    )
    assert response.status_code == 200
    assert "that would make a fallback loop" in response.content.decode()


def test_an_engineer_creates_an_endpoint_with_the_form(signed_in, org, team, deployment):
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-create"),
        {"name": "support", "team": team.pk, "description": "Ticket answers"}
        | routes_data(("support-bot", "", 100)),
    )
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(name="support")
    assert endpoint.routes.get().deployment == deployment
    assert audited("endpoint.create", endpoint) is not None


def test_a_viewer_sees_the_routes_but_not_the_editor(signed_in, org, endpoint):
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "100.0%" in page
    assert "Edit routes" not in page
    assert (
        signed_in(org["viewer"]).post(reverse("endpoint-routes", args=[endpoint.name]), {}).status_code == 403
    )


def test_an_outsider_sees_no_endpoint_of_another_team(signed_in, org, endpoint):
    client = signed_in(org["outsider"])
    assert b"support-bot" not in client.get(reverse("endpoint-list")).content
    assert client.get(reverse("endpoint-detail", args=[endpoint.name])).status_code == 404
