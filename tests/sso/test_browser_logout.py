"""Signing out in Chromium, from either side: out of Portfolio (which ends the realm's session too), and out
of the realm (whose back-channel logout ends Portfolio's session). The realm is the oidc-provider stand-in,
sending its logout tokens to the live server."""

from __future__ import annotations

import pytest

from portfolio.accounts.models import SsoSession
from portfolio.audit.models import AuditEvent
from tests.e2e import test_browser
from tests.sso.conftest import USERS, running_realm, switch_on

pytestmark = pytest.mark.e2e
browser_page = test_browser.browser_page  # the same Chromium page fixture as the other browser tests


@pytest.fixture
def browser_realm(live_server, tmp_path):
    """A realm that sends the browser back to the live server and its logout tokens there too."""
    with running_realm(
        tmp_path,
        [f"{live_server.url}/login/sso/callback/"],
        backchannel_logout_uri=f"{live_server.url}/login/sso/backchannel-logout/",
    ) as started:
        yield started


def sign_in(page, live_server, realm) -> None:
    page.goto(f"{live_server.url}/teams/")
    page.get_by_role("link", name="Sign in with Acme").click()
    page.wait_for_url(f"{realm.issuer}/login-actions/**")
    page.fill("#username", "alice")
    page.fill("#password", USERS["alice"]["password"])
    page.click("#kc-login")
    page.wait_for_url(f"{live_server.url}/teams/")


@pytest.mark.django_db(transaction=True)
def test_signing_out_in_portfolio_ends_the_realms_session_too(
    live_server, settings, browser_realm, browser_page
):
    switch_on(settings, browser_realm)
    page = browser_page
    sign_in(page, live_server, browser_realm)
    assert SsoSession.objects.get().sid  # the realm named its session (back-channel logout needs it)

    page.locator("summary").filter(has_text="alice").click()
    page.get_by_role("button", name="Sign out").click()
    # The realm asks to confirm (Keycloak does not when given the ID token as the hint), then sends the
    # browser back to the sign-in page.
    page.wait_for_url(f"{browser_realm.issuer}/**")
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(f"{live_server.url}/login/")
    assert "You are signed out." in page.content()
    assert AuditEvent.objects.get(action="user.logout").after == {"method": "sso"}

    # The realm's session is gone: signing on again asks for the password.
    page.get_by_role("link", name="Sign in with Acme").click()
    page.wait_for_url(f"{browser_realm.issuer}/login-actions/**")
    assert page.locator("#password").is_visible()


@pytest.mark.django_db(transaction=True)
def test_signing_out_at_the_realm_ends_the_portfolio_session_by_back_channel(
    live_server, settings, browser_realm, browser_page
):
    switch_on(settings, browser_realm)
    page = browser_page
    sign_in(page, live_server, browser_realm)

    # Out of the realm, on its own logout page (as from another application of the realm).
    page.goto(f"{browser_realm.issuer}/protocol/openid-connect/logout")
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(f"{browser_realm.issuer}/**/logout/**")  # the realm's "signed out" page

    logout = AuditEvent.objects.get(action="user.logout")
    assert (logout.actor_label, logout.object_repr, logout.after) == (
        "system:keycloak",
        "alice",
        {"method": "backchannel"},
    )
    assert not SsoSession.objects.exists()
    page.goto(f"{live_server.url}/teams/")
    assert page.url.startswith(f"{live_server.url}/login/?next=")
