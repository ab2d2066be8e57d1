"""Who may sign in with a password (PORTFOLIO_LOCAL_SIGN_IN): everyone, only platform admins (break-glass,
while everyone else signs in with the organisation), or nobody; checked at start-up."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from portfolio.accounts.choices import OrgRole
from portfolio.audit.models import AuditEvent
from portfolio.envparse import Env
from tests.conftest import PASSWORD

SSO = {
    "PORTFOLIO_OIDC_SERVER_URL": "https://keycloak.example.com",
    "PORTFOLIO_OIDC_REALM": "acme",
    "PORTFOLIO_OIDC_CLIENT_ID": "portfolio",
    "PORTFOLIO_OIDC_CLIENT_SECRET": "s3cret",
}
# The sign-in page only names the organisation: no realm is reached in these tests.
CONFIG = {
    "server_url": "https://keycloak.example.com/",
    "realm": "acme",
    "client_id": "portfolio",
    "client_secret": "s3cret",
    "organisation": "Acme",
}


def _policy(environ: dict) -> str:
    env = Env(environ)
    return env.local_sign_in(oidc=env.oidc(production=True))


def test_everyone_may_sign_in_with_a_password_by_default():
    assert _policy({}) == "everyone"
    assert _policy({**SSO, "PORTFOLIO_LOCAL_SIGN_IN": "admins"}) == "admins"
    assert _policy({**SSO, "PORTFOLIO_LOCAL_SIGN_IN": "off"}) == "off"


@pytest.mark.parametrize(("value", "who"), [("admins", "nobody but the platform admins"), ("off", "nobody")])
def test_admins_only_or_off_without_single_sign_on_stops_start_up(value, who):
    with pytest.raises(ImproperlyConfigured, match=f"needs single sign-on .*without it {who} could sign in"):
        _policy({"PORTFOLIO_LOCAL_SIGN_IN": value})


def test_an_unknown_policy_stops_start_up():
    with pytest.raises(ImproperlyConfigured, match=r"PORTFOLIO_LOCAL_SIGN_IN='sso-only' is not valid"):
        _policy({**SSO, "PORTFOLIO_LOCAL_SIGN_IN": "sso-only"})


def _login(client, username: str, password: str = PASSWORD):
    return client.post(reverse("login"), {"username": username, "password": password})


@pytest.mark.django_db
def test_a_password_sign_in_is_audited_as_such(client, org):
    assert _login(client, "viewer").status_code == 302
    assert AuditEvent.objects.get(action="user.login").after == {"method": "password"}


@pytest.mark.django_db
def test_with_admins_only_a_platform_admin_signs_in_with_a_password(client, org, make_user, settings):
    settings.OIDC, settings.LOCAL_SIGN_IN = CONFIG, "admins"
    page = client.get(reverse("login")).text
    assert 'name="password"' in page and "kept for platform admins" in page and "Sign in with Acme" in page
    make_user("granted-admin", org_role=OrgRole.ADMIN)
    for name in ("admin", "granted-admin"):  # a superuser, and a holder of the org admin role
        assert _login(client, name).status_code == 302 and client.session.get("_auth_user_id")
        client.logout()
    assert AuditEvent.objects.filter(action="user.login", after={"method": "password"}).count() == 2


@pytest.mark.django_db
def test_with_admins_only_anyone_else_is_told_to_sign_in_with_the_organisation(client, org, settings):
    settings.OIDC, settings.LOCAL_SIGN_IN = CONFIG, "admins"
    response = _login(client, "owner")
    assert response.status_code == 403 and "_auth_user_id" not in client.session
    assert "kept for platform admins" in response.text and "Sign in with Acme" in response.text
    refused = AuditEvent.objects.get(action="user.login_failed")
    assert (refused.object_id, refused.after["reason"]) == ("owner", "password_sign_in_admins_only")
    # A wrong password still reads as one, whoever the account is.
    assert "Wrong user name or password" in _login(client, "owner", "wrong-password").text


@pytest.mark.django_db
def test_with_password_sign_in_off_the_form_is_gone_and_a_post_is_refused(client, org, settings):
    settings.OIDC, settings.LOCAL_SIGN_IN = CONFIG, "off"
    page = client.get(reverse("login")).text
    assert 'name="password"' not in page and "Sign in with Acme" in page
    response = _login(client, "admin")
    assert response.status_code == 403 and "_auth_user_id" not in client.session
    assert "turned off on this platform" in response.text and 'name="password"' not in response.text
    assert not AuditEvent.objects.filter(action__startswith="user.login").exists()


def test_the_settings_of_a_starting_process_carry_the_policy_or_refuse_it(tmp_path):
    from tests.test_settings import _production_env, _settings_in

    refused = _settings_in(_production_env(tmp_path, PORTFOLIO_LOCAL_SIGN_IN="off"), "LOCAL_SIGN_IN")
    assert refused.returncode != 0 and "PORTFOLIO_LOCAL_SIGN_IN=off needs single sign-on" in refused.stderr
    started = _settings_in(
        _production_env(tmp_path, PORTFOLIO_LOCAL_SIGN_IN="admins", **SSO), "LOCAL_SIGN_IN"
    )
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout) == {"LOCAL_SIGN_IN": "admins"}
