"""The API-key pages (secret shown once, limits, revocation), behind the gate. The usage dashboard is
tests/gateway/test_views_usage.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portfolio.accounts import secrets_hashing
from portfolio.audit.models import AuditEvent
from serving.gateway import services
from serving.gateway.models import ApiKey, KeyPolicy
from serving.gateway.views import month_start
from serving.models import Endpoint
from tests.conftest import actor_for
from tests.gateway.usage_rows import rollup, this_hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_gateway_processes")]

SECRET = re.compile(r"slm_[a-z0-9]{12}_[A-Za-z0-9_\-]{16,}")


@pytest.fixture
def endpoints(team, other_team):
    return {
        "support": Endpoint.objects.create(name="support-bot", owner_team=team),
        "triage": Endpoint.objects.create(name="ticket-triage", owner_team=team),
        "contracts": Endpoint.objects.create(name="clause-finder", owner_team=other_team),
    }


# --- Creating a key --------------------------------------------------------------------------------
def test_a_key_expiring_past_ten_years_is_a_form_error_not_an_internal_error(signed_in, org, team, endpoints):
    client = signed_in(org["developer"])
    response = client.post(
        reverse("apikey-create"), {"name": "forever", "team": team.pk, "expires_on": "9999-12-31"}
    )
    assert response.status_code == 200 and "within ten years" in response.content.decode()
    assert not ApiKey.objects.filter(name="forever").exists()


def test_a_developer_creates_a_key_and_sees_the_secret_once(signed_in, org, team, endpoints):
    client = signed_in(org["developer"])
    response = client.post(
        reverse("apikey-create"),
        {
            "name": "ticket router",
            "team": team.pk,
            "scopes": ["support-bot"],
            "allowed_ips": "10.0.0.0/8, 192.168.1.7",
            "rpm_limit": "120",
            "tpm_limit": "50000",
            "monthly_token_budget": "2000000",
            "monthly_budget": "150.00",
            "expires_on": (timezone.now() + timedelta(days=30)).date().isoformat(),
        },
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = SECRET.search(response.content.decode()).group(0)
    key = ApiKey.objects.get(name="ticket router")
    assert secret.startswith(f"slm_{key.key_id}_")
    assert key.scopes == ["support-bot"]
    assert key.allowed_ips == ["10.0.0.0/8", "192.168.1.7/32"]
    assert (key.rpm_limit, key.tpm_limit, key.monthly_token_budget) == (120, 50000, 2_000_000)
    assert key.monthly_budget == Decimal("150.00")
    assert key.expires_at.astimezone(UTC).time() == datetime.min.time()
    # The example snippets call the gateway on this host with an endpoint the key may call.
    assert "http://testserver/v1" in response.content.decode()
    assert '"model": "support-bot"' in response.content.decode()

    # Only the keyed hash is stored; the secret is in no row, no audit event, no session, no message.
    assert key.secret_hash == secrets_hashing.keyed_hash(secret)
    assert secret not in json.dumps(list(ApiKey.objects.values()), default=str)
    event = AuditEvent.objects.get(action="apikey.create")
    assert event.object_id == str(key.pk)
    assert secret not in json.dumps([event.before, event.after, event.object_repr])
    assert secret not in json.dumps(dict(client.session.items()), default=str)
    listing = client.get(reverse("apikey-list"))
    assert key.display_prefix in listing.content.decode()
    assert secret not in listing.content.decode()
    assert not SECRET.search(listing.content.decode())


def test_a_viewer_gets_403_creating_a_key(signed_in, org, team):
    client = signed_in(org["viewer"])
    assert client.get(reverse("apikey-create")).status_code == 403
    response = client.post(reverse("apikey-create"), {"name": "mine", "team": team.pk})
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_a_key_for_a_team_the_actor_cannot_see_is_404(signed_in, org, other_team):
    response = signed_in(org["developer"]).post(
        reverse("apikey-create"), {"name": "x", "team": other_team.pk}
    )
    assert response.status_code == 404
    assert not ApiKey.objects.exists()


def test_scopes_must_be_endpoints_of_the_chosen_team(signed_in, org, team, endpoints):
    response = signed_in(org["admin"]).post(
        reverse("apikey-create"), {"name": "x", "team": team.pk, "scopes": ["clause-finder"]}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["scopes"] == [
        "clause-finder is not an endpoint of Support AI or shared with it."
    ]
    assert not ApiKey.objects.exists()


def test_a_bad_ip_range_is_shown_next_to_its_field(signed_in, org, team):
    response = signed_in(org["owner"]).post(
        reverse("apikey-create"), {"name": "x", "team": team.pk, "allowed_ips": "10.0.0.0/8, not-an-ip"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["allowed_ips"] == [
        "'not-an-ip' is not an IP address or CIDR range."
    ]
    assert not ApiKey.objects.exists()


def test_the_form_offers_only_endpoints_of_teams_the_actor_manages(signed_in, org, endpoints):
    page = signed_in(org["developer"]).get(reverse("apikey-create")).content.decode()
    assert "support-bot" in page and "ticket-triage" in page
    assert "clause-finder" not in page


# --- The list --------------------------------------------------------------------------------------
def test_the_list_shows_limits_status_and_this_months_usage_per_key(signed_in, org, team, key):
    rollup(key, this_hour(), requests=7, input_tokens=300, output_tokens=200)
    rollup(key, month_start() - timedelta(hours=1), requests=1000)  # last month: not counted
    revoked, _ = services.create_key(actor=actor_for(org["owner"]), team=team, name="old script")
    services.revoke_key(actor=actor_for(org["owner"]), key=revoked)
    response = signed_in(org["developer"]).get(reverse("apikey-list"))
    page = response.content.decode()
    assert "router prod" in page and key.display_prefix in page
    assert "60 requests/min" in page
    sections = response.context["sections"]
    assert [s["team"] for s in sections] == [team]
    listed = {k.name: k for k in sections[0]["keys"]}
    assert (listed["router prod"].month_requests, listed["router prod"].month_tokens) == (7, 500)
    assert listed["router prod"].status == "active"
    assert listed["old script"].status == "revoked"
    assert reverse("apikey-revoke", args=[revoked.pk]) not in page
    assert "{#" not in page and "{%" not in page


def test_a_key_outlives_its_creators_departure_and_the_owner_sees_they_left(
    signed_in, org, key, system_actor
):
    from portfolio.accounts.services import deactivate_user

    assert ">left<" not in signed_in(org["owner"]).get(reverse("apikey-list")).content.decode()
    deactivate_user(actor=system_actor, user=org["developer"])
    key.refresh_from_db()
    assert key.revoked_at is None  # the team's key, not the person's

    page = signed_in(org["owner"]).get(reverse("apikey-list")).content.decode()
    assert "by developer" in page and ">left<" in page
    edit = signed_in(org["owner"]).get(reverse("apikey-edit", args=[key.pk])).content.decode()
    assert ">left<" in edit


def test_a_team_without_keys_offers_its_members_to_create_the_first_one(signed_in, org, team, other_key):
    response = signed_in(org["developer"]).get(reverse("apikey-list"))
    assert [(s["team"], s["keys"]) for s in response.context["sections"]] == [(team, [])]
    assert f"{reverse('apikey-create')}?team={team.pk}" in response.content.decode()
    # Org-wide roles see the teams that have keys, not every team of the organisation.
    auditor = signed_in(org["auditor"]).get(reverse("apikey-list"))
    assert [s["team"].pk for s in auditor.context["sections"]] == [other_key.team_id]


def test_the_list_shows_no_team_the_actor_does_not_manage_keys_of(signed_in, org, key, other_key):
    engineer = signed_in(org["engineer"]).get(reverse("apikey-list"))
    assert engineer.context["sections"] == []
    assert key.name not in engineer.content.decode()
    outsider = signed_in(org["outsider"]).get(reverse("apikey-list")).content.decode()
    assert "contracts batch" in outsider and key.name not in outsider


def test_an_auditor_sees_every_teams_keys_read_only(signed_in, org, key, other_key):
    response = signed_in(org["auditor"]).get(reverse("apikey-list"))
    page = response.content.decode()
    assert key.name in page and other_key.name in page
    assert all(not section["can_manage"] for section in response.context["sections"])
    assert reverse("apikey-edit", args=[key.pk]) not in page
    assert reverse("apikey-create") not in page


def test_the_list_costs_the_same_queries_for_more_keys(signed_in, org, team, key):
    client = signed_in(org["developer"])
    rollup(key, this_hour())
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("apikey-list"))
    for n in range(5):
        more, _ = services.create_key(actor=actor_for(org["owner"]), team=team, name=f"key {n}", rpm_limit=5)
        rollup(more, this_hour())
    with CaptureQueriesContext(connection) as many:
        assert client.get(reverse("apikey-list")).status_code == 200
    assert len(many) == len(few)


# --- Editing and revoking --------------------------------------------------------------------------
def test_an_outsider_gets_404_on_the_teams_key_edit_page(signed_in, org, key):
    client = signed_in(org["outsider"])
    assert client.get(reverse("apikey-edit", args=[key.pk])).status_code == 404
    assert client.post(reverse("apikey-edit", args=[key.pk]), {"rpm_limit": "1"}).status_code == 404
    assert client.post(reverse("apikey-revoke", args=[key.pk])).status_code == 404
    key.refresh_from_db()
    assert key.rpm_limit == 60 and key.revoked_at is None


def test_a_viewer_gets_403_on_the_key_edit_page(signed_in, org, key):
    assert signed_in(org["viewer"]).get(reverse("apikey-edit", args=[key.pk])).status_code == 403


def test_an_owner_changes_the_limits_and_it_is_audited(signed_in, org, key, endpoints):
    # Changed by issue 10 (who controls spend): limits and budgets are the owners' to set, not developers'.
    client = signed_in(org["owner"])
    page = client.get(reverse("apikey-edit", args=[key.pk]))
    assert page.status_code == 200
    assert page.context["form"]["rpm_limit"].value() == 60
    response = client.post(
        reverse("apikey-edit", args=[key.pk]),
        {"scopes": ["ticket-triage"], "allowed_ips": "", "rpm_limit": "30", "monthly_token_budget": "1000"},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.scopes, key.rpm_limit, key.tpm_limit, key.monthly_token_budget) == (
        ["ticket-triage"],
        30,
        None,
        1000,
    )
    event = AuditEvent.objects.get(action="apikey.update")
    assert (event.before["rpm_limit"], event.after["rpm_limit"]) == (60, 30)


def test_a_developer_sees_the_limits_locked_and_a_forged_post_cannot_lift_them(
    signed_in, org, team, endpoints
):
    owners_key, _ = services.create_key(
        actor=actor_for(org["owner"]), team=team, name="capped", rpm_limit=60, monthly_budget=Decimal("20.00")
    )
    client = signed_in(org["developer"])
    response = client.post(
        reverse("apikey-edit", args=[owners_key.pk]),
        {
            "scopes": ["ticket-triage"],
            "allowed_ips": "10.0.0.0/8",
            "rpm_limit": "100000",
            "monthly_budget": "",
        },
    )
    assert response.status_code == 302
    owners_key.refresh_from_db()
    assert (owners_key.rpm_limit, owners_key.monthly_budget) == (60, Decimal("20.00"))
    assert (owners_key.scopes, owners_key.allowed_ips) == (["ticket-triage"], ["10.0.0.0/8"])
    event = AuditEvent.objects.get(action="apikey.update")
    assert event.before["rpm_limit"] == event.after["rpm_limit"] == 60
    page = client.get(reverse("apikey-edit", args=[owners_key.pk]))
    assert page.context["form"].fields["monthly_budget"].disabled
    assert "Limits and budgets are set by the team's owners" in page.content.decode()


def test_a_developers_new_key_takes_the_team_policy_and_is_refused_above_it(signed_in, org, team):
    services.update_key_policy(
        actor=actor_for(org["owner"]), team=team, rpm_limit=100, monthly_budget=Decimal("25")
    )
    client = signed_in(org["developer"])
    form = client.get(reverse("apikey-create"))
    assert "at most 100 requests/min" in form.content.decode()
    over = client.post(reverse("apikey-create"), {"name": "greedy", "team": team.pk, "rpm_limit": "101"})
    assert over.status_code == 200
    assert "key policy allows at most 100" in over.context["form"].errors["rpm_limit"][0]
    assert not ApiKey.objects.filter(name="greedy").exists()
    created = client.post(reverse("apikey-create"), {"name": "within", "team": team.pk, "rpm_limit": "50"})
    assert created.status_code == 200
    key = ApiKey.objects.get(name="within")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget) == (50, None, Decimal("25.00"))
    # An owner is not bound: empty is no limit.
    signed_in(org["owner"]).post(reverse("apikey-create"), {"name": "owners", "team": team.pk})
    assert ApiKey.objects.get(name="owners").monthly_budget is None


def test_owner_developer_and_outsider_on_the_key_policy_page(signed_in, org, team, key):
    url = reverse("apikey-policy", args=[team.slug])
    assert signed_in(org["outsider"]).get(url).status_code == 404
    developer = signed_in(org["developer"])
    page = developer.get(url)
    assert page.status_code == 200 and page.context["form"].fields["rpm_limit"].disabled
    assert developer.post(url, {"rpm_limit": "1"}).status_code == 403
    assert not KeyPolicy.objects.exists()
    owner = signed_in(org["owner"])
    response = owner.post(url, {"rpm_limit": "30", "monthly_budget": "12.50"})
    assert response.status_code == 302
    policy = KeyPolicy.objects.get(team=team)
    assert (policy.rpm_limit, policy.tpm_limit, policy.monthly_budget) == (30, None, Decimal("12.50"))
    event = AuditEvent.objects.get(action="keypolicy.update")
    assert (event.before["rpm_limit"], event.after["rpm_limit"]) == (None, 30)
    # The router key (60 requests/min) is above the new ceiling: the page names it for the owner.
    page = owner.get(url)
    assert [k.name for k in page.context["exceeding"]] == ["router prod"]
    listing = owner.get(reverse("apikey-list")).content.decode()
    assert "at most 30 requests/min" in listing and url in listing


def test_revoking_with_the_form_sets_revoked_at_and_is_audited(signed_in, org, key):
    client = signed_in(org["owner"])
    confirm = client.get(reverse("apikey-revoke", args=[key.pk]))
    assert confirm.status_code == 200
    assert "This cannot be undone" in confirm.content.decode()
    response = client.post(reverse("apikey-revoke", args=[key.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("apikey-list")
    key.refresh_from_db()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(action="apikey.revoke")
    assert event.object_id == str(key.pk) and event.after["revoked"] is True
    assert "revoked" in response.content.decode()
    # A revoked key's limits can no longer be changed from the page.
    client.post(reverse("apikey-edit", args=[key.pk]), {"rpm_limit": "1"})
    key.refresh_from_db()
    assert key.rpm_limit == 60
