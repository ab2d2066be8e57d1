"""A browser sign-in applies the mapping rules to the client roles (and realm roles, groups) its ID token
leaves out, taken from the access token of the same exchange: Keycloak's default scopes put them there only.
Without it, a realm lacking the ID-token mappers changed client-role grants only at the directory sync.
Tokens are crafted as in test_id_tokens (a key the test trusts in place of the realm's)."""

from __future__ import annotations

import time

import pytest

from portfolio.accounts.models import Membership
from portfolio.accounts.sso import rules
from tests.conftest import actor_for
from tests.sso import test_id_tokens
from tests.sso.conftest import CLIENT_ID, USERS
from tests.sso.test_id_tokens import answer, signed, unsigned

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]
trusted, realm_client = test_id_tokens.trusted, test_id_tokens.realm_client  # the same fixtures
OTHER_KEY = test_id_tokens.jwk.JWK.generate(kty="RSA", size=2048, kid="other", alg="RS256", use="sig")


@pytest.fixture
def support_rule(make_user, team):
    admin = actor_for(make_user("root", org_role="admin"))
    rules.create_rule(actor=admin, kind="client_role", value="support", team=team, team_role="developer")
    return team


def access_claims(realm_client, **changes) -> dict:
    now = int(time.time())
    claims = {
        "iss": realm_client.realm.issuer,
        "sub": USERS["alice"]["sub"],
        "aud": "account",
        "azp": CLIENT_ID,
        "typ": "Bearer",
        "exp": now + 300,
        "iat": now,
        "resource_access": {CLIENT_ID: {"roles": ["support"]}},
    }
    claims.update(changes)
    return claims


def sign_in(realm_client, monkeypatch, access_token: str | None, **id_claims):
    response = answer(
        realm_client, monkeypatch, lambda claims: signed({**claims, **id_claims}), access_token=access_token
    )
    assert response.status_code == 302 and realm_client.session.get("_auth_user_id"), response
    return Membership.objects.filter(user_id=realm_client.session["_auth_user_id"])


def test_client_roles_only_the_access_token_carries_are_applied_at_sign_in(
    realm_client, monkeypatch, trusted, support_rule
):
    memberships = sign_in(realm_client, monkeypatch, signed(access_claims(realm_client)))

    assert {(m.team, m.role, m.source) for m in memberships} == {(support_rule, "developer", "sso")}


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(
            lambda rc: signed(access_claims(rc), key=OTHER_KEY), id="signed by a key the realm lacks"
        ),
        pytest.param(lambda rc: unsigned(access_claims(rc)), id="unsigned"),
        pytest.param(lambda rc: signed(access_claims(rc, sub="someone-else")), id="another subject"),
        pytest.param(
            lambda rc: signed(access_claims(rc, azp="another-client")), id="issued to another client"
        ),
        pytest.param(lambda rc: signed(access_claims(rc, typ="Refresh")), id="a refresh token"),
        pytest.param(lambda rc: signed(access_claims(rc, exp=int(time.time()) - 3600)), id="expired"),
        pytest.param(
            lambda rc: signed(access_claims(rc, iss="https://elsewhere.example")), id="another issuer"
        ),
        pytest.param(lambda rc: "not-a-jwt", id="opaque"),
    ],
)
def test_an_access_token_failing_a_check_is_not_used_and_the_sign_in_goes_on(
    realm_client, monkeypatch, trusted, support_rule, forged
):
    assert not sign_in(realm_client, monkeypatch, forged(realm_client)).exists()


def test_what_the_id_token_says_is_never_overridden_by_the_access_token(
    realm_client, monkeypatch, trusted, support_rule
):
    """The ID token says the person has no role of this client: the access token's role is not taken."""
    memberships = sign_in(
        realm_client,
        monkeypatch,
        signed(access_claims(realm_client)),
        resource_access={CLIENT_ID: {"roles": []}},
    )

    assert not memberships.exists()


def test_without_an_access_token_the_id_token_alone_decides(realm_client, monkeypatch, trusted, support_rule):
    assert not sign_in(realm_client, monkeypatch, None).exists()
