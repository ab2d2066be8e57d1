"""Sharing an endpoint with another team, a department or the organisation: the audited services and who
may use them, what a team's keys may then call and be scoped to, the REST API and the endpoint page."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portfolio.accounts.models import Department, Team
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from serving import services
from serving.gateway import services as key_services
from serving.gateway.forms import KeyCreateForm
from serving.gateway.routing import _read_snapshot
from serving.models import Endpoint, EndpointShare
from tests.conftest import actor_for
from tests.serving.conftest import audited

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(owner, team, deployment):
    return services.create_endpoint(
        actor=owner, name="support", team=team, routes=[{"deployment": deployment.name}]
    )


@pytest.fixture
def neighbour(other_department):
    """A second team of the other department, which shares the department's grants but not its team's."""
    return Team.objects.create(department=other_department, name="Litigation", slug="litigation")


# --- The services ----------------------------------------------------------------------------------
def test_an_owner_shares_an_endpoint_with_a_team_and_the_audit_keeps_the_shares_before_and_after(
    org, owner, endpoint, other_team
):
    share = services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    assert (share.team, share.department, share.organisation) == (other_team, None, False)
    assert share.created_by == org["owner"]
    event = audited("endpoint.share", endpoint)
    assert event.before["shares"] == [] and event.after["shares"] == ["team:contracts"]
    assert endpoint.snapshot()["shares"] == ["team:contracts"]


def test_unsharing_removes_the_share_and_is_audited(owner, endpoint, other_department):
    services.share_endpoint(actor=owner, endpoint=endpoint, department=other_department)
    services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    services.unshare_endpoint(actor=owner, endpoint=endpoint, department=other_department)
    assert list(endpoint.shares.values_list("organisation", flat=True)) == [True]
    event = audited("endpoint.unshare", endpoint)
    assert event.before["shares"] == ["department:CC-200", "organisation"]
    assert event.after["shares"] == ["organisation"]


def test_the_engineer_of_the_owning_team_may_not_share_and_an_outsider_does_not_see_the_endpoint(
    org, endpoint, other_team
):
    with pytest.raises(Forbidden):
        services.share_endpoint(actor=actor_for(org["engineer"]), endpoint=endpoint, team=other_team)
    with pytest.raises(NotFound):
        services.share_endpoint(actor=actor_for(org["outsider"]), endpoint=endpoint, team=other_team)
    services.share_endpoint(actor=actor_for(org["admin"]), endpoint=endpoint, team=other_team)
    with pytest.raises(Forbidden):
        services.unshare_endpoint(actor=actor_for(org["engineer"]), endpoint=endpoint, team=other_team)
    with pytest.raises(NotFound):
        services.unshare_endpoint(actor=actor_for(org["outsider"]), endpoint=endpoint, team=other_team)
    assert endpoint.shares.count() == 1


def test_sharing_with_the_owning_team_is_refused(owner, endpoint, team):
    with pytest.raises(Invalid, match="Support AI owns support"):
        services.share_endpoint(actor=owner, endpoint=endpoint, team=team)
    assert audited("endpoint.share", endpoint) is None


def test_sharing_twice_with_the_same_target_is_a_conflict(owner, endpoint, other_team, other_department):
    services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    services.share_endpoint(actor=owner, endpoint=endpoint, department=other_department)
    services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    with pytest.raises(Conflict, match="already shared with team Contracts"):
        services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    with pytest.raises(Conflict, match="already shared with department Legal"):
        services.share_endpoint(actor=owner, endpoint=endpoint, department=other_department)
    with pytest.raises(Conflict, match="already shared with the organisation"):
        services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    assert endpoint.shares.count() == 3


def test_a_share_names_exactly_one_target(owner, endpoint, other_team, other_department):
    for targets in (
        {},
        {"team": other_team, "department": other_department},
        {"team": other_team, "organisation": True},
    ):
        with pytest.raises(Invalid, match="exactly one"):
            services.share_endpoint(actor=owner, endpoint=endpoint, **targets)
    assert not EndpointShare.objects.exists()


def test_unsharing_what_is_not_shared_is_not_found(owner, endpoint, other_team):
    with pytest.raises(NotFound, match="not shared with team Contracts"):
        services.unshare_endpoint(actor=owner, endpoint=endpoint, team=other_team)


def test_deleting_an_endpoint_takes_its_shares_with_it_and_the_audit_keeps_them(owner, endpoint, other_team):
    services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    pk = endpoint.pk
    services.delete_endpoint(actor=owner, endpoint=endpoint)
    assert not EndpointShare.objects.exists()
    event = AuditEvent.objects.get(action="endpoint.delete", object_id=str(pk))
    assert event.before["shares"] == ["team:contracts"]


# --- What a team may call --------------------------------------------------------------------------
def test_a_team_may_call_its_own_endpoints_and_those_shared_with_it_its_department_or_everyone(
    owner, endpoint, team, other_team, neighbour, other_department
):
    assert set(Endpoint.objects.callable_by(team)) == {endpoint}
    assert not Endpoint.objects.callable_by(other_team).exists()
    services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    assert list(Endpoint.objects.callable_by(other_team)) == [endpoint]
    assert not Endpoint.objects.callable_by(neighbour).exists(), "a team's share is not its department's"
    services.share_endpoint(actor=owner, endpoint=endpoint, department=other_department)
    assert list(Endpoint.objects.callable_by(neighbour)) == [endpoint]
    stranger = Team.objects.create(
        department=Department.objects.create(name="Finance", cost_center="CC-300"),
        name="Ledger",
        slug="ledger",
    )
    assert not Endpoint.objects.callable_by(stranger).exists()
    services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    assert list(Endpoint.objects.callable_by(stranger)) == [endpoint]
    assert list(Endpoint.objects.callable_by(other_team)) == [endpoint], "one row however many grants"


def test_a_key_may_be_scoped_to_an_endpoint_shared_with_its_team_only(org, owner, endpoint, other_team):
    outsider = actor_for(org["outsider"])
    with pytest.raises(Invalid, match="Contracts has no endpoint 'support'"):
        key_services.create_key(actor=outsider, team=other_team, name="k", scopes=["support"])
    services.share_endpoint(actor=owner, endpoint=endpoint, team=other_team)
    key, _ = key_services.create_key(actor=outsider, team=other_team, name="k", scopes=["support"])
    assert key.scopes == ["support"]


def test_the_key_form_offers_the_endpoints_shared_with_the_team_saying_who_shares_them(
    org, owner, endpoint, other_team
):
    services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    form = KeyCreateForm(actor=actor_for(org["outsider"]))
    (group,) = form.scope_groups()
    assert group["team_id"] == other_team.pk
    assert [(o["value"], o["shared_by"]) for o in group["options"]] == [("support", "Support AI")]
    posted = KeyCreateForm(
        {"name": "k", "team": other_team.pk, "scopes": ["support"]}, actor=actor_for(org["outsider"])
    )
    assert posted.is_valid(), posted.errors


# --- REST API --------------------------------------------------------------------------------------
def test_the_api_shares_lists_and_unshares(client, org, endpoint, other_team, other_department):
    client.force_login(org["owner"])
    url = "/api/v1/endpoints/support/shares"
    created = client.post(url, {"team_id": other_team.pk}, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["target"] == "team:contracts" and created.json()["created_by"] == "owner"
    client.post(url, {"department_id": other_department.pk}, content_type="application/json")
    listed = client.get(url).json()
    assert listed["count"] == 2
    assert [s["target"] for s in listed["items"]] == ["department:CC-200", "team:contracts"]
    again = client.post(url, {"team_id": other_team.pk}, content_type="application/json")
    assert again.status_code == 409
    assert client.delete(f"{url}?team_id={other_team.pk}").status_code == 204
    assert client.delete(f"{url}?team_id={other_team.pk}").status_code == 404
    assert [s["target"] for s in client.get(url).json()["items"]] == ["department:CC-200"]


def test_the_api_refuses_unknown_and_out_of_range_targets(client, org, endpoint):
    client.force_login(org["owner"])
    url = "/api/v1/endpoints/support/shares"
    assert client.post(url, {"team_id": 999_999}, content_type="application/json").status_code == 404
    assert client.post(url, {"department_id": 999_999}, content_type="application/json").status_code == 404
    for bad in ({"team_id": 0}, {"team_id": 2**63}, {"team_id": "x"}):
        assert client.post(url, bad, content_type="application/json").status_code in (400, 422)
    response = client.post(url, {}, content_type="application/json")
    assert response.status_code == 400 and "exactly one" in response.json()["error"]["message"]
    assert not EndpointShare.objects.exists()


@pytest.mark.parametrize(("role", "status"), [("owner", 201), ("engineer", 403), ("outsider", 404)])
def test_only_an_owner_of_the_team_shares_through_the_api(client, org, endpoint, other_team, role, status):
    client.force_login(org[role])
    response = client.post(
        "/api/v1/endpoints/support/shares", {"organisation": True}, content_type="application/json"
    )
    assert response.status_code == status
    assert EndpointShare.objects.exists() is (status == 201)


def test_an_outsider_does_not_see_the_shares_of_an_endpoint_it_cannot_see(client, org, endpoint):
    client.force_login(org["outsider"])
    assert client.get("/api/v1/endpoints/support/shares").status_code == 404
    client.force_login(org["viewer"])
    assert client.get("/api/v1/endpoints/support/shares").json()["count"] == 0


# --- The endpoint page -----------------------------------------------------------------------------
def test_the_owner_shares_and_unshares_on_the_endpoint_page(client, org, endpoint, other_team):
    client.force_login(org["owner"])
    page = client.get(reverse("endpoint-detail", args=["support"]))
    assert "Shared with" in page.content.decode()
    choices = dict(page.context["share_form"].fields["target"].choices)
    assert f"team:{endpoint.owner_team_id}" not in str(choices), "the owning team is not offered"
    response = client.post(reverse("endpoint-share", args=["support"]), {"target": f"team:{other_team.pk}"})
    assert response.status_code == 302
    share = endpoint.shares.get()
    assert share.team == other_team
    page = client.get(reverse("endpoint-detail", args=["support"])).content.decode()
    assert "Contracts" in page and "Stop sharing" in page
    response = client.post(reverse("endpoint-unshare", args=["support", share.pk]))
    assert response.status_code == 302 and not endpoint.shares.exists()
    assert audited("endpoint.unshare", endpoint) is not None


def test_a_target_not_offered_comes_back_as_a_form_error(client, org, endpoint, team):
    client.force_login(org["owner"])
    response = client.post(reverse("endpoint-share", args=["support"]), {"target": f"team:{team.pk}"})
    assert response.status_code == 200
    assert response.context["share_form"].errors["target"]
    assert not EndpointShare.objects.exists()


@pytest.mark.parametrize(("role", "status"), [("engineer", 403), ("outsider", 404)])
def test_only_owners_share_on_the_page(client, org, owner, endpoint, other_team, role, status):
    share = services.share_endpoint(actor=owner, endpoint=endpoint, organisation=True)
    client.force_login(org[role])
    assert (
        client.post(reverse("endpoint-share", args=["support"]), {"target": "organisation"}).status_code
        == status
    )
    assert client.post(reverse("endpoint-unshare", args=["support", share.pk])).status_code == status
    assert endpoint.shares.count() == 1
    if role == "engineer":
        page = client.get(reverse("endpoint-detail", args=["support"])).content.decode()
        assert "Every team of the organisation" in page and "Stop sharing" not in page


# --- The gateway's routing table -------------------------------------------------------------------
def test_the_routing_table_reads_every_endpoints_shares_in_one_query(
    owner, deployment, team, other_team, other_department
):
    def shared(name: str, **target) -> None:
        endpoint = services.create_endpoint(
            actor=owner, name=name, team=team, routes=[{"deployment": deployment.name}]
        )
        services.share_endpoint(actor=owner, endpoint=endpoint, **target)

    shared("first", team=other_team)
    with CaptureQueriesContext(connection) as one:
        snapshot = _read_snapshot()
    info = snapshot.endpoints["first"]
    assert (info.shared_teams, info.shared_departments, info.shared_organisation) == (
        frozenset({other_team.pk}),
        frozenset(),
        False,
    )
    assert info.owner == "support-ai"
    shared("second", department=other_department)
    shared("third", organisation=True)
    with CaptureQueriesContext(connection) as three:
        snapshot = _read_snapshot()
    assert len(three) == len(one), "no query per endpoint"
    assert snapshot.endpoints["second"].shared_departments == {other_department.pk}
    assert snapshot.endpoints["third"].shared_organisation
