"""A person signs in through the realm's own sign-in page in Chromium and lands in Portfolio, audited."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from portfolio.accounts.models import SsoMappingRule
from portfolio.audit.models import AuditEvent
from tests.e2e import test_browser
from tests.sso.conftest import USERS, running_realm, switch_on

pytestmark = pytest.mark.e2e
User = get_user_model()
browser_page = test_browser.browser_page  # the same Chromium page fixture as the other browser tests


@pytest.fixture
def browser_realm(live_server, tmp_path):
    """A realm that sends the browser back to the live server (its own process: another redirect URI)."""
    with running_realm(tmp_path, [f"{live_server.url}/login/sso/callback/"]) as started:
        yield started


@pytest.mark.django_db(transaction=True)
def test_a_person_signs_in_on_the_realms_page_and_lands_in_portfolio_in_the_mapped_team(
    live_server, settings, browser_realm, browser_page, team
):
    switch_on(settings, browser_realm)
    SsoMappingRule.objects.create(
        kind="group", value=USERS["alice"]["groups"][0], team=team, team_role="engineer"
    )
    page = browser_page
    page.goto(f"{live_server.url}/teams/")
    assert "/login/" in page.url
    page.get_by_role("link", name="Sign in with Acme").click()

    page.wait_for_url(f"{browser_realm.issuer}/login-actions/**")
    page.fill("#username", "alice")
    page.fill("#password", USERS["alice"]["password"])
    page.click("#kc-login")

    page.wait_for_url(f"{live_server.url}/teams/")
    assert "alice" in page.content() and team.name in page.content()
    page.goto(f"{live_server.url}/teams/{team.slug}/")
    members = page.locator("#members").inner_text() if page.locator("#members").count() else page.content()
    assert "alice" in members and "from Acme single sign-on" in members
    login = AuditEvent.objects.get(action="user.login")
    assert (login.actor_label, login.after) == ("alice", {"method": "sso"})
    alice = User.objects.get(username="alice")
    assert alice.external_identities.count() == 1
    assert alice.memberships.get().role == "engineer"
    assert AuditEvent.objects.get(action="membership.create").actor_label == "system:keycloak"
