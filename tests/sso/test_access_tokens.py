"""The REST API with the realm's access tokens (``Authorization: Bearer <JWT>``): real tokens from the running
provider (a service account's by client credentials, and alice's from the authorization code flow) act
exactly as that user's session would; every token with one defect is refused with a 401 in the API's error
shape that says why and never repeats the token. Tokens with a claim the provider would not issue are signed
with a key the test puts in place of the realm's (``trusted``), to reach each check on its own."""

from __future__ import annotations

import base64
import json
import logging
import time

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portfolio.accounts import services as accounts
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import ExternalIdentity, Membership, PersonalToken
from portfolio.accounts.sso import client as oidc
from portfolio.audit.models import AuditEvent
from tests.conftest import actor_for
from tests.sso.conftest import CLIENT_ID, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, USERS
from tests.sso.test_id_tokens import signed, trusted, unsigned  # noqa: F401 (trusted: a fixture)
from tests.sso.test_sign_in import sign_in_at_realm, start

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
User = get_user_model()
SERVICE_ACCOUNT = f"service-account-{SERVICE_CLIENT_ID}"


def service_token(realm, **extra) -> str:
    """An access token of the ci-runner service account, by client credentials at the token endpoint."""
    response = httpx.post(
        f"{realm.issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": SERVICE_CLIENT_ID,
            "client_secret": SERVICE_CLIENT_SECRET,
            **extra,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def call(client, token: str, path: str = "/api/v1/me"):
    return client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")


def assert_refused(response, token: str, says: str) -> dict:
    assert response.status_code == 401, response.content
    error = response.json()["error"]
    assert error["code"] == "unauthenticated" and says in error["message"], error
    assert response["WWW-Authenticate"].startswith("Bearer")
    for part in token.split("."):
        if len(part) > 8:
            assert part not in response.text
    return error


def test_a_service_account_token_acts_as_its_user_made_just_in_time(client, sso, team):
    token = service_token(sso)
    claims = claims_of(token)
    assert claims["preferred_username"] == SERVICE_ACCOUNT and claims["aud"] == CLIENT_ID
    assert (claims["typ"], claims["azp"]) == ("Bearer", SERVICE_CLIENT_ID)

    response = call(client, token)

    assert response.status_code == 200, response.content
    assert response.json() == {"username": SERVICE_ACCOUNT, "org_roles": [], "teams": {}}
    robot = User.objects.get(username=SERVICE_ACCOUNT)
    identity = ExternalIdentity.objects.get(user=robot)
    assert (identity.issuer, identity.subject) == (sso.issuer, claims["sub"])
    created = AuditEvent.objects.get(action="user.create")
    assert created.after["source"] == "sso" and created.object_repr == SERVICE_ACCOUNT
    assert "_auth_user_id" not in client.session

    # An admin gives the service account a team: its token now reads that team, as a session would.
    Membership.objects.create(user=robot, team=team, role=TeamRole.DEVELOPER)
    events = AuditEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        by_token = call(client, token, "/api/v1/teams")
    assert by_token.status_code == 200
    assert [row["slug"] for row in by_token.json()["items"]] == ["support-ai"]
    writes = [q["sql"] for q in queries if q["sql"].split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == [] and AuditEvent.objects.count() == events  # no write, no audit row per call
    assert call(client, token).json()["teams"] == {str(team.pk): TeamRole.DEVELOPER}
    client.force_login(robot)
    assert client.get("/api/v1/teams").json() == by_token.json()


def test_a_realm_access_token_cannot_mint_a_personal_token_that_would_outlive_it(client, sso):
    """A few minutes' access token, leaked from a CI log, must not become a personal token of up to
    PERSONAL_TOKEN_MAX_DAYS that survives the realm disabling the account or rotating the client."""
    token = service_token(sso)
    assert call(client, token).status_code == 200
    response = client.post(
        "/api/v1/tokens",
        {"name": "child"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 400 and "signed-in user" in response.json()["error"]["message"]
    assert not PersonalToken.objects.exists()


def test_alices_access_token_from_the_code_flow_answers_as_her_session(client, sso, monkeypatch):
    from django.test import Client

    tokens = {}
    exchange = oidc.exchange

    def keeping(config, **kwargs):
        tokens.update(exchange(config, **kwargs))
        return tokens

    monkeypatch.setattr(oidc, "exchange", keeping)
    client.get(sign_in_at_realm(start(client), "alice"))
    access_token = tokens["access_token"]
    claims = claims_of(access_token)
    assert (claims["sub"], claims["aud"], claims["typ"]) == (USERS["alice"]["sub"], CLIENT_ID, "Bearer")

    by_session = client.get("/api/v1/me")
    by_token = call(Client(), access_token)

    assert by_session.status_code == by_token.status_code == 200
    assert by_token.json() == by_session.json() and by_token.json()["username"] == "alice"
    assert User.objects.filter(username="alice").count() == 1 == ExternalIdentity.objects.count()


def test_a_token_for_another_audience_is_refused(client, sso):
    token = service_token(sso, resource="urn:audience:another-api")
    assert claims_of(token)["aud"] == "another-api"
    assert_refused(call(client, token), token, "it is not for this API (aud)")
    assert not User.objects.filter(username=SERVICE_ACCOUNT).exists()


def test_the_api_audience_is_configurable(client, sso, settings):
    settings.OIDC = {**settings.OIDC, "api_audience": "another-api"}
    assert call(client, service_token(sso, resource="urn:audience:another-api")).status_code == 200
    token = service_token(sso)
    assert_refused(call(client, token), token, "it is not for this API (aud)")


def crafted(realm, **changes) -> dict:
    now = int(time.time())
    claims = {
        "iss": realm.issuer,
        "sub": "3f0d6c1e-2a4b-4c8d-9e7f-1a2b3c4d5e6f",
        "aud": CLIENT_ID,
        "azp": SERVICE_CLIENT_ID,
        "typ": "Bearer",
        "iat": now,
        "exp": now + 300,
        "preferred_username": SERVICE_ACCOUNT,
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


@pytest.mark.usefixtures("trusted")
def test_a_well_formed_token_from_a_trusted_key_is_accepted(client, sso):
    """The crafted path itself works, so the refusals below are refusals of their one defect."""
    assert call(client, signed(crafted(sso))).json()["username"] == SERVICE_ACCOUNT


@pytest.mark.usefixtures("trusted")
def test_a_token_of_a_client_the_api_does_not_take_tokens_from_is_refused(client, sso):
    """Any client of the realm can name this API's audience and hard-code claims in its tokens (a realm
    role, a group, a subject): such a token used to act, with the admin role its claims gave it."""
    from portfolio.accounts.models import SsoMappingRule

    SsoMappingRule.objects.create(kind="realm_role", value="portfolio-admin", org_role="admin")
    forged = signed(crafted(sso, azp="team-x-client", realm_access={"roles": ["portfolio-admin"]}))
    assert_refused(call(client, forged), forged, "it was issued to 'team-x-client', not to a client this API")
    nameless = signed(crafted(sso, azp=None))
    assert_refused(call(client, nameless), nameless, "it was issued to no client (azp)")
    assert not User.objects.filter(username=SERVICE_ACCOUNT).exists()


@pytest.mark.usefixtures("trusted")
def test_a_service_accounts_roles_follow_each_new_token_not_only_its_first(client, sso):
    """A service account never signs in and the directory sync cannot see it: the rules were applied at its
    first call only, so a role taken from it in the realm stayed here for good (an admin could not remove an
    SSO grant either). Each new token's claims are now applied at its first call."""
    from portfolio.accounts.models import OrgRoleGrant, SsoMappingRule

    SsoMappingRule.objects.create(kind="realm_role", value="portfolio-admin", org_role="admin")
    admin_token = signed(crafted(sso, jti="first", realm_access={"roles": ["portfolio-admin"]}))
    assert call(client, admin_token).json()["org_roles"] == ["admin"]
    robot = User.objects.get(username=SERVICE_ACCOUNT)
    assert OrgRoleGrant.objects.get(user=robot).source == "sso"

    plain = signed(crafted(sso, jti="second", realm_access={"roles": []}))
    assert call(client, plain).json()["org_roles"] == []
    assert not OrgRoleGrant.objects.filter(user=robot).exists()
    revoked = AuditEvent.objects.get(action="org_role.revoke")
    assert revoked.actor_label == "system:keycloak"
    events = AuditEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        assert call(client, plain).status_code == 200  # the same token again: read, not applied again
    writes = [q["sql"] for q in queries if q["sql"].split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == [] and AuditEvent.objects.count() == events


@pytest.mark.usefixtures("trusted")
def test_an_older_token_first_used_late_does_not_grant_back_a_role_taken_since(client, sso):
    """Each token's claims are applied at its first call: a token issued before a role was taken away, first
    used after a newer token had applied the removal, granted the role back for the rest of its lifetime."""
    from portfolio.accounts.models import OrgRoleGrant, SsoMappingRule

    SsoMappingRule.objects.create(kind="realm_role", value="portfolio-admin", org_role="admin")
    now = int(time.time())
    old_admin = signed(crafted(sso, jti="old", iat=now - 120, realm_access={"roles": ["portfolio-admin"]}))
    newer_plain = signed(crafted(sso, jti="newer", iat=now - 10, realm_access={"roles": []}))
    assert call(client, newer_plain).json()["org_roles"] == []
    assert call(client, old_admin).json()["org_roles"] == [], "the older token's role is older news"
    robot = User.objects.get(username=SERVICE_ACCOUNT)
    assert not OrgRoleGrant.objects.filter(user=robot).exists()
    newest_admin = signed(crafted(sso, jti="newest", iat=now, realm_access={"roles": ["portfolio-admin"]}))
    assert call(client, newest_admin).json()["org_roles"] == ["admin"], "a newer grant is applied"


@pytest.mark.usefixtures("trusted")
@pytest.mark.parametrize(
    ("changes", "says"),
    [
        pytest.param({"exp": int(time.time()) - 120}, "it has expired", id="expired"),
        pytest.param({"nbf": int(time.time()) + 600}, "it is not valid yet (nbf)", id="not valid yet"),
        pytest.param(
            {"iss": "http://127.0.0.1:1/realms/other"}, "it was not issued by the realm", id="another issuer"
        ),
        pytest.param({"aud": ["account", "other"]}, "it is not for this API", id="another audience"),
        pytest.param({"typ": "ID"}, "it is not an access token", id="an ID token"),
        pytest.param({"typ": "Refresh"}, "it is not an access token", id="a refresh token"),
        pytest.param({"sub": None}, "a required claim is missing", id="without a subject"),
        pytest.param({"exp": None}, "a required claim is missing", id="without an expiry"),
    ],
)
def test_a_token_with_a_bad_claim_is_refused(client, sso, changes, says):
    token = signed(crafted(sso, **changes))
    assert_refused(call(client, token), token, says)
    assert not User.objects.filter(username=SERVICE_ACCOUNT).exists()


@pytest.mark.usefixtures("trusted")
def test_several_audiences_are_fine_when_one_is_this_api(client, sso):
    assert call(client, signed(crafted(sso, aud=["account", CLIENT_ID]))).status_code == 200


@pytest.mark.usefixtures("trusted")
def test_a_token_with_alg_none_is_refused_even_with_every_claim_right(client, sso):
    token = unsigned(crafted(sso))
    assert_refused(call(client, token), token, "its signing algorithm is not accepted (algorithm 'none'")


def test_a_token_signed_by_a_key_the_realm_does_not_have_is_refused(client, sso):
    token = signed(crafted(sso))
    assert_refused(call(client, token), token, "it is not signed by one of the realm's keys")


def test_a_real_token_whose_claims_were_changed_is_refused(client, sso):
    header, _, signature = service_token(sso).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(crafted(sso)).encode()).rstrip(b"=").decode()
    token = f"{header}.{forged}.{signature}"
    assert_refused(call(client, token), token, "it is not signed by one of the realm's keys")


@pytest.mark.parametrize("garbage", ["a.b.c", "eyJhbGciOi.eyJzdWIi.", "x" * 40 + "." + "y" * 40 + ".z"])
def test_garbage_shaped_like_a_token_is_refused(client, sso, garbage):
    assert_refused(call(client, garbage), garbage, "it is not a well-formed JSON Web Token")


def test_garbage_of_any_other_shape_is_an_ordinary_401(client, sso):
    response = call(client, "not a token at all")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"


def test_a_deactivated_users_token_is_refused(client, sso, make_user):
    token = service_token(sso)
    assert call(client, token).status_code == 200
    robot = User.objects.get(username=SERVICE_ACCOUNT)
    accounts.deactivate_user(actor=actor_for(make_user("root", superuser=True)), user=robot)
    assert_refused(call(client, token), token, "its account is deactivated here")


def test_a_deactivated_users_token_gets_no_upload_allowance(client, sso, make_user):
    """The body limit grants the upload size to a credential of an active account only (bodylimit.py): a
    realm token of an account deactivated here would have its 2 GiB spooled before the API refused it."""
    from portfolio.bodylimit import credentialed

    token = service_token(sso)
    scope = {"headers": [(b"authorization", f"Bearer {token}".encode())]}
    assert credentialed(scope), "a subject with no account yet: its first call makes one"
    assert call(client, token).status_code == 200
    assert credentialed(scope)
    robot = User.objects.get(username=SERVICE_ACCOUNT)
    accounts.deactivate_user(actor=actor_for(make_user("root", superuser=True)), user=robot)
    assert not credentialed(scope)


def test_two_first_calls_at_once_find_the_one_account(client, sso, monkeypatch):
    """Two CI jobs of a new service account start together: the second one's insert hits the unique
    identity, and it acts as the account the first one made."""
    from django.db import IntegrityError

    from portfolio.accounts.sso import services as sso_services

    made_by_the_other_call = sso_services.account_for

    def racing(**kwargs):
        made_by_the_other_call(**kwargs)
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(sso_services, "account_for", racing)
    response = call(client, service_token(sso))
    assert response.status_code == 200 and response.json()["username"] == SERVICE_ACCOUNT
    assert User.objects.filter(username=SERVICE_ACCOUNT).count() == 1


def test_a_realm_account_cannot_take_over_a_local_account_of_the_same_name(client, sso, make_user):
    make_user(SERVICE_ACCOUNT)
    token = service_token(sso)
    assert_refused(call(client, token), token, f"An account named {SERVICE_ACCOUNT!r} already exists here")
    assert not ExternalIdentity.objects.exists()


def test_realm_tokens_are_refused_when_single_sign_on_is_off(client, sso, settings):
    token = service_token(sso)
    settings.OIDC = None
    assert_refused(call(client, token), token, "single sign-on are not accepted")


def test_a_realm_that_cannot_be_reached_is_a_503_not_a_bad_token(client, sso, settings):
    token = service_token(sso)
    settings.OIDC = {**settings.OIDC, "server_url": "http://127.0.0.1:9/"}
    response = call(client, token)
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
    assert "Acme cannot be reached" in response.json()["error"]["message"]


def test_the_token_never_reaches_the_logs(client, sso, caplog):
    caplog.set_level(logging.DEBUG)
    token = service_token(sso)
    call(client, token)
    call(client, token[:-4] + "AAAA")
    signature = token.rsplit(".", 1)[1]
    assert signature not in caplog.text and token.split(".")[1] not in caplog.text
