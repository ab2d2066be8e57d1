"""The key API: partial updates that change only what they name, who controls spend (developers within the
team's key policy, owners above it), bounded numbers, and usage that never crosses teams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portfolio.audit.models import AuditEvent
from serving.gateway import services
from serving.gateway.models import ApiKey, KeyPolicy, UsageHourly
from serving.models import Endpoint
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

FULL_LIMITS = {
    "rpm_limit": 120,
    "tpm_limit": 50_000,
    "monthly_token_budget": 2_000_000,
    "monthly_budget": "150.00",
}


@pytest.fixture(autouse=True)
def _no_gateway_processes(monkeypatch):
    """No gateway runs in these tests: changes are not announced to one."""
    from serving.gateway import keystate

    monkeypatch.setattr(keystate, "mark_revoked", lambda key_id: None)
    monkeypatch.setattr(keystate, "invalidate", lambda key_id: None)


@pytest.fixture
def api(client):
    """Calls /api/v1 as a user (signed in; CSRF is not enforced by the test client)."""

    def call(user, method: str, path: str, data=None):
        client.force_login(user)
        kwargs = {"content_type": "application/json"} if data is not None else {}
        return (
            getattr(client, method)(f"/api/v1{path}", data, **kwargs)
            if data is not None
            else getattr(client, method)(f"/api/v1{path}")
        )

    return call


@pytest.fixture
def endpoints(team, other_team):
    return [
        Endpoint.objects.create(name="support-bot", owner_team=team),
        Endpoint.objects.create(name="ticket-triage", owner_team=team),
    ]


@pytest.fixture
def owned_key(org, team, endpoints):
    """A key an owner set up in full: scopes, addresses, rate limits and budgets."""
    key, _ = services.create_key(
        actor=actor_for(org["owner"]),
        team=team,
        name="router prod",
        scopes=["support-bot"],
        allowed_ips=["10.0.0.0/8"],
        rpm_limit=120,
        tpm_limit=50_000,
        monthly_token_budget=2_000_000,
        monthly_budget=Decimal("150.00"),
    )
    return key


def _settings(key: ApiKey) -> tuple:
    key.refresh_from_db()
    return (
        key.scopes,
        key.allowed_ips,
        key.rpm_limit,
        key.tpm_limit,
        key.monthly_token_budget,
        key.monthly_budget,
    )


# --- Item 5: PATCH changes only what it names ------------------------------------------------------
def test_a_patch_with_only_rpm_limit_changes_only_the_rpm_limit(api, org, owned_key):
    response = api(org["owner"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 30})
    assert response.status_code == 200, response.content
    assert _settings(owned_key) == (["support-bot"], ["10.0.0.0/8"], 30, 50_000, 2_000_000, Decimal("150.00"))
    event = AuditEvent.objects.get(action="apikey.update")
    assert (event.before["rpm_limit"], event.after["rpm_limit"]) == (120, 30)
    assert event.after["monthly_budget"] == "150.00" and event.after["scopes"] == ["support-bot"]


def test_a_put_with_only_rpm_limit_is_refused_and_wipes_nothing(api, org, owned_key):
    response = api(org["owner"], "put", f"/keys/{owned_key.pk}", {"rpm_limit": 30})
    assert response.status_code == 422
    assert {"scopes", "allowed_ips", "tpm_limit", "monthly_budget"} <= set(response.json()["error"]["fields"])
    assert _settings(owned_key) == (
        ["support-bot"],
        ["10.0.0.0/8"],
        120,
        50_000,
        2_000_000,
        Decimal("150.00"),
    )
    assert not AuditEvent.objects.filter(action="apikey.update").exists()


def test_a_put_replaces_every_field_and_null_means_no_limit(api, org, owned_key):
    replacement = {
        "scopes": [],
        "allowed_ips": [],
        "rpm_limit": None,
        "tpm_limit": 10,
        "monthly_token_budget": None,
        "monthly_budget": None,
    }
    response = api(org["owner"], "put", f"/keys/{owned_key.pk}", replacement)
    assert response.status_code == 200, response.content
    assert _settings(owned_key) == ([], [], None, 10, None, None)


def test_an_explicit_null_in_a_patch_removes_that_limit_only(api, org, owned_key):
    response = api(org["owner"], "patch", f"/keys/{owned_key.pk}", {"monthly_budget": None})
    assert response.status_code == 200
    assert _settings(owned_key) == (["support-bot"], ["10.0.0.0/8"], 120, 50_000, 2_000_000, None)


def test_a_patch_that_changes_nothing_writes_no_audit_row(api, org, owned_key):
    assert api(org["owner"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 120}).status_code == 200
    assert not AuditEvent.objects.filter(action="apikey.update").exists()


def test_a_revoked_key_can_no_longer_be_changed(api, org, owned_key):
    services.revoke_key(actor=actor_for(org["owner"]), key=owned_key)
    response = api(org["owner"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 1})
    assert response.status_code == 409
    assert _settings(owned_key)[2] == 120


# --- Item 6: who controls spend --------------------------------------------------------------------
def test_a_developer_cannot_lift_a_budget_an_owner_set(api, org, owned_key):
    full = {"scopes": ["support-bot"], "allowed_ips": ["10.0.0.0/8"], **FULL_LIMITS, "monthly_budget": None}
    assert api(org["developer"], "put", f"/keys/{owned_key.pk}", full).status_code == 403
    for change in (
        {"monthly_budget": None},
        {"monthly_budget": "9999.00"},
        {"monthly_token_budget": None},
        {"rpm_limit": 100_000},
        {"tpm_limit": None},
    ):
        response = api(org["developer"], "patch", f"/keys/{owned_key.pk}", change)
        assert response.status_code == 403, (change, response.content)
        assert "only an owner" in response.json()["error"]["message"]
    assert _settings(owned_key) == (
        ["support-bot"],
        ["10.0.0.0/8"],
        120,
        50_000,
        2_000_000,
        Decimal("150.00"),
    )


def test_a_developer_changes_scopes_and_addresses_of_a_key(api, org, owned_key):
    response = api(
        org["developer"],
        "patch",
        f"/keys/{owned_key.pk}",
        {"scopes": ["ticket-triage"], "allowed_ips": ["192.168.1.7"]},
    )
    assert response.status_code == 200, response.content
    assert _settings(owned_key)[:3] == (["ticket-triage"], ["192.168.1.7/32"], 120)
    # A full replacement that repeats the limits as they are is a change of scopes only.
    full = {"scopes": [], "allowed_ips": [], **FULL_LIMITS}
    assert api(org["developer"], "put", f"/keys/{owned_key.pk}", full).status_code == 200
    assert _settings(owned_key) == ([], [], 120, 50_000, 2_000_000, Decimal("150.00"))


def test_owner_developer_and_outsider_on_a_keys_limits(api, org, owned_key):
    assert api(org["outsider"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 1}).status_code == 404
    assert api(org["developer"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 1}).status_code == 403
    assert api(org["owner"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 1}).status_code == 200
    assert api(org["admin"], "patch", f"/keys/{owned_key.pk}", {"rpm_limit": 2}).status_code == 200
    assert _settings(owned_key)[2] == 2


@pytest.fixture
def policy(api, org, team):
    response = api(
        org["owner"],
        "patch",
        f"/teams/{team.pk}/key-policy",
        {"rpm_limit": 60, "tpm_limit": 10_000, "monthly_token_budget": 1_000_000, "monthly_budget": "50.00"},
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_a_developers_key_takes_the_policy_ceilings_it_leaves_out(api, org, team, policy):
    response = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "batch", "rpm_limit": 10})
    assert response.status_code == 201, response.content
    key = ApiKey.objects.get(name="batch")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_token_budget, key.monthly_budget) == (
        10,
        10_000,
        1_000_000,
        Decimal("50.00"),
    )


@pytest.mark.parametrize(
    "asked",
    [{"rpm_limit": 61}, {"monthly_budget": "50.01"}, {"monthly_token_budget": None}, {"tpm_limit": None}],
)
def test_a_developers_key_above_a_ceiling_is_refused(api, org, team, policy, asked):
    response = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "greedy", **asked})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "over_policy" and list(error["fields"]) == list(asked)
    assert "key policy allows at most" in error["message"]
    assert not ApiKey.objects.filter(name="greedy").exists()


def test_the_answer_with_a_new_key_is_kept_by_no_cache(api, org, team):
    response = api(org["owner"], "post", f"/teams/{team.pk}/keys", {"name": "shown-once"})
    assert response.status_code == 201 and response.json()["key"].startswith("slm_")
    assert "no-store" in response["Cache-Control"]


def test_an_owner_sets_any_limit_and_no_limit_is_the_default_for_owners(api, org, team, policy):
    response = api(org["owner"], "post", f"/teams/{team.pk}/keys", {"name": "big", "rpm_limit": 5000})
    assert response.status_code == 201
    key = ApiKey.objects.get(name="big")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget) == (5000, None, None)


def test_without_a_policy_a_developer_key_has_no_ceilings(api, org, team):
    response = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "free", "rpm_limit": 99_999})
    assert response.status_code == 201
    assert api(org["developer"], "get", f"/teams/{team.pk}/key-policy").json()["rpm_limit"] is None


def test_only_owners_and_admins_change_the_key_policy_and_each_change_is_audited(api, org, team, other_team):
    assert api(org["developer"], "patch", f"/teams/{team.pk}/key-policy", {"rpm_limit": 1}).status_code == 403
    assert api(org["auditor"], "patch", f"/teams/{team.pk}/key-policy", {"rpm_limit": 1}).status_code == 403
    assert api(org["outsider"], "patch", f"/teams/{team.pk}/key-policy", {"rpm_limit": 1}).status_code == 404
    assert not KeyPolicy.objects.exists()
    assert api(org["owner"], "patch", f"/teams/{team.pk}/key-policy", {"rpm_limit": 60}).status_code == 200
    response = api(org["admin"], "patch", f"/teams/{team.pk}/key-policy", {"monthly_budget": "10.50"})
    assert response.json()["rpm_limit"] == 60 and response.json()["monthly_budget"] == "10.50"
    events = list(AuditEvent.objects.filter(action="keypolicy.update").order_by("sequence"))
    assert [(e.before["rpm_limit"], e.after["rpm_limit"]) for e in events] == [(None, 60), (60, 60)]
    assert (events[1].before["monthly_budget"], events[1].after["monthly_budget"]) == (None, "10.50")
    assert events[0].team_id == team.pk and events[0].actor_label == "owner"


def test_the_key_policy_is_readable_by_members_not_by_outsiders(api, org, team, policy):
    assert api(org["viewer"], "get", f"/teams/{team.pk}/key-policy").json()["monthly_budget"] == "50.00"
    assert api(org["outsider"], "get", f"/teams/{team.pk}/key-policy").status_code == 404


# --- Hostile numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        {"rpm_limit": 2**40},
        {"rpm_limit": 0},
        {"monthly_token_budget": 10**30},
        {"monthly_budget": "0.001"},
        {"monthly_budget": "1e20"},
        {"monthly_budget": "NaN"},
        {"scopes": ["x" * 64]},
        {"scopes": [f"s{i}" for i in range(101)]},
        {"allowed_ips": ["10.0.0.1"] * 101},
    ],
)
def test_hostile_numbers_and_lists_are_refused_in_the_error_shape(api, org, owned_key, payload):
    response = api(org["owner"], "patch", f"/keys/{owned_key.pk}", payload)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "invalid"
    assert _settings(owned_key)[2] == 120


def test_an_expiry_without_a_zone_is_taken_as_utc(api, org, team):
    moment = (timezone.now() + timedelta(days=2)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    response = api(
        org["owner"], "post", f"/teams/{team.pk}/keys", {"name": "naive", "expires_at": moment.isoformat()}
    )
    assert response.status_code == 201, response.content
    assert ApiKey.objects.get(name="naive").expires_at == moment.replace(tzinfo=UTC)


@pytest.mark.parametrize("moment", ["9999-12-31T23:00:00-05:00", "2099-01-01T00:00:00Z"])
def test_an_expiry_further_than_ten_years_is_refused_and_the_keys_stay_readable(api, org, team, moment):
    """9999-12-31T23:00-05:00 is in the year 10000 in UTC: PostgreSQL stores it, psycopg cannot read it back,
    and the team's keys could no longer be listed or revoked."""
    response = api(org["owner"], "post", f"/teams/{team.pk}/keys", {"name": "forever", "expires_at": moment})
    assert response.status_code == 400, response.content
    assert "years ahead" in response.json()["error"]["message"]
    assert not ApiKey.objects.filter(name="forever").exists()
    assert api(org["owner"], "get", f"/teams/{team.pk}/keys").status_code == 200


# --- Usage never crosses teams ----------------------------------------------------------------------
def test_another_teams_usage_never_comes_from_the_usage_api(api, org, team, other_team):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    UsageHourly.objects.create(hour=hour, team_id=team.pk, endpoint="support-bot", requests=4242)
    UsageHourly.objects.create(hour=hour, team_id=other_team.pk, endpoint="clause-finder", requests=17)
    for query in ("", f"?team_id={team.pk}", "?group_by=team", f"?team_id={team.pk}&group_by=key"):
        response = api(org["outsider"], "get", f"/usage{query}")
        assert response.status_code == 200
        assert all(row["requests"] != 4242 for row in response.json()), query
        assert "support-bot" not in response.content.decode()
    own = api(org["outsider"], "get", "/usage").json()
    assert [(row["group"], row["requests"]) for row in own] == [("clause-finder", 17)]
    # The team's own members and the org-wide roles do see it.
    assert {row["requests"] for row in api(org["viewer"], "get", "/usage").json()} == {4242}
    assert {row["requests"] for row in api(org["auditor"], "get", "/usage").json()} == {4242, 17}


def test_the_usage_api_gives_speech_calls_seconds_of_audio_beside_their_zero_tokens(api, org, team):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    UsageHourly.objects.create(hour=hour, team_id=team.pk, endpoint="whisper", requests=2, audio_ms=3_500)
    UsageHourly.objects.create(hour=hour, team_id=team.pk, endpoint="support-bot", requests=1, input_tokens=9)
    response = api(org["owner"], "get", "/usage")
    assert response.status_code == 200, response.content
    rows = {row["group"]: row for row in response.json()}
    whisper = rows["whisper"]
    assert (Decimal(whisper["audio_seconds"]), whisper["input_tokens"], whisper["output_tokens"]) == (
        Decimal("3.5"),
        0,
        0,
    )
    assert Decimal(rows["support-bot"]["audio_seconds"]) == 0


def test_a_usage_answer_too_large_to_hold_is_refused_whole_not_cut_short(api, org, team, monkeypatch):
    """A year by key of a large organisation was built in memory and sent in one answer; past the bound the
    caller is told to narrow it, and no partial total reads as complete."""
    from serving.gateway import api as usage_api

    monkeypatch.setattr(usage_api, "MAX_USAGE_ROWS", 2)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for name in ("a", "b", "c"):
        UsageHourly.objects.create(hour=hour, team_id=team.pk, endpoint=name, requests=1)
    refused = api(org["owner"], "get", "/usage?days=366")
    assert (
        refused.status_code == 400
        and "More than 2 days x endpoint rows" in refused.json()["error"]["message"]
    )
    assert len(api(org["owner"], "get", "/usage?group_by=team").json()) == 1


def test_a_team_holds_a_bounded_number_of_usable_keys(api, org, team, settings):
    """Per-key ceilings bound a team only as far as its keys are counted: past the bound a new key is a
    409 until one is revoked; revoked and expired keys and the platform's service keys do not count."""
    settings.KEYS_PER_TEAM = 2
    developer = actor_for(org["developer"])
    services.create_key(actor=developer, team=team, name="one")
    lapsed, _ = services.create_key(actor=developer, team=team, name="lapsed")
    ApiKey.objects.filter(pk=lapsed.pk).update(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    services.create_key(actor=developer, team=team, name="service", service=True)
    second = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "two"})
    assert second.status_code in (200, 201), second.content
    refused = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "three"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_keys"
    assert ApiKey.objects.filter(team=team, name="three").count() == 0
    services.revoke_key(actor=developer, key=ApiKey.objects.get(team=team, name="one"))
    again = api(org["developer"], "post", f"/teams/{team.pk}/keys", {"name": "three"})
    assert again.status_code in (200, 201)
