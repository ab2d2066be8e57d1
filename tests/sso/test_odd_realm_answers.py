"""A realm that answers 200 with something other than its documents (a proxy's or a maintenance page's HTML:
python-keycloak raises TypeError on a body that is no JSON object; a JSON object without the keys the sign-in
reads) is a realm that cannot be reached, never a 500, and such a document is not cached for an hour; a group
whose path holds "#" or "?" has its own members read, not those of the group its path was cut to."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.urls import reverse
from keycloak import KeycloakOpenID

from portfolio.accounts.sso import client as sso_client
from portfolio.accounts.sso import directory
from portfolio.accounts.sso.config import OidcConfig
from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db
REALM = {
    "server_url": "http://127.0.0.1:9/",  # nothing listens there: every answer below is stood in for
    "realm": "portfolio",
    "client_id": "portfolio",
    "client_secret": "s3cret",
    "organisation": "Acme",
}


@pytest.fixture
def realm(settings):
    settings.OIDC = REALM
    cache.clear()
    yield
    cache.clear()


def _html(*args, **kwargs):
    raise TypeError("string indices must be integers, not 'str'")  # what python-keycloak raises on HTML


def test_a_discovery_page_of_html_is_the_realm_unavailable(client, realm, monkeypatch):
    monkeypatch.setattr(KeycloakOpenID, "well_known", _html)
    response = client.get(reverse("sso-login"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert "Acme cannot be reached" in client.get(reverse("login")).content.decode()


def test_a_discovery_document_without_an_issuer_is_not_cached(client, realm, monkeypatch):
    monkeypatch.setattr(KeycloakOpenID, "well_known", lambda self: {"authorization_endpoint": "http://x/a"})
    assert client.get(reverse("sso-login")).status_code == 302
    config = OidcConfig(server_url=REALM["server_url"], realm="portfolio", client_id="portfolio")
    assert cache.get(sso_client._cache_key(config, "discovery")) is None


def test_a_token_answer_of_html_is_the_realm_unavailable_and_nobodys_failure(client, realm, monkeypatch):
    document = {"issuer": "http://127.0.0.1:9/realms/portfolio", "authorization_endpoint": "http://x/a"}
    monkeypatch.setattr(KeycloakOpenID, "well_known", lambda self: document)
    monkeypatch.setattr(KeycloakOpenID, "token", _html)
    pending = {"nonce": "n", "code_verifier": "v", "redirect_uri": "http://testserver/cb", "next": "/"}
    session = client.session
    session["sso.pending"] = {"pending-state": pending}
    session.save()
    response = client.get(f"{reverse('sso-callback')}?state=pending-state&code=c")
    assert response.status_code == 302
    (failed,) = AuditEvent.objects.filter(action="user.login_failed")
    assert failed.after["reason"] == "provider_unavailable"


def test_a_group_path_is_sent_quoted(monkeypatch):
    asked: list[str] = []

    class Admin:
        def get_users(self, query):
            return [{"id": "u1", "enabled": True}]

        def get_group_by_path(self, path):
            asked.append(path)
            return {"id": "g1"}

        def get_group_members(self, group_id, query):
            return [{"id": "u1"}]

    monkeypatch.setattr(directory, "_admin", lambda *args: Admin())
    config = OidcConfig(server_url=REALM["server_url"], realm="portfolio", client_id="portfolio")
    found = directory.read(
        config,
        client_id="portfolio-sync",
        client_secret="s",
        wanted=directory.Wanted(groups=frozenset({"/eng/C#", "/eng/ops? yes"})),
    )
    assert sorted(asked) == ["eng/C%23", "eng/ops%3F%20yes"]
    assert found.groups["/eng/C#"] == {"u1"}
