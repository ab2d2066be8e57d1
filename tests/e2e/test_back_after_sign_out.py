"""A real browser with its back/forward cache on (Playwright turns it off by default): after an auditor signs
out, the next person at the browser pressing Back gets the sign-in page, not the audit log the auditor
left, which Chromium would otherwise restore from memory without asking the server."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.e2e.browsers import chromium_page

pytestmark = pytest.mark.e2e

# Set on every page once shown: whether the browser showed it from its back/forward cache (``pageshow``'s
# persisted); unset while it is hidden, so that a restored page does not answer with its first showing's.
RESTORED_FLAG = """
addEventListener("pageshow", (event) => { window.restoredFromCache = event.persisted; });
addEventListener("pagehide", () => { delete window.restoredFromCache; });
"""
SHOWN = "window.restoredFromCache !== undefined"


@pytest.fixture
def page_with_back_forward_cache():
    with chromium_page(back_forward_cache=True) as page:
        page.add_init_script(RESTORED_FLAG)
        yield page


@pytest.mark.django_db(transaction=True)
def test_back_after_signing_out_shows_the_sign_in_page_not_the_audit_log(
    live_server, make_user, page_with_back_forward_cache
):
    make_user("auditor1", org_role="auditor")
    page = page_with_back_forward_cache

    # The browser's back/forward cache is really on: a page that allows it is restored from memory.
    page.goto(f"{live_server.url}/healthz")
    page.goto(f"{live_server.url}/login/")
    page.go_back(wait_until="commit")  # a page restored from memory is not loaded again: no "load" event
    page.wait_for_function(SHOWN)
    assert page.url == f"{live_server.url}/healthz" and page.evaluate("window.restoredFromCache") is True

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("auditor1")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/audit/")
    assert "user.login" in page.content()

    page.click("summary")
    page.click("text=Sign out")
    page.wait_for_url(f"{live_server.url}/login/")
    asked = []
    page.on("request", lambda request: asked.append(request.url))
    page.go_back(wait_until="commit")
    page.wait_for_function(SHOWN)

    assert page.url == f"{live_server.url}/login/?next=/audit/"
    assert f"{live_server.url}/audit/" in asked  # the server was asked, and sent the sign-in page
    assert page.evaluate("window.restoredFromCache") is False
    assert "user.login" not in page.content()
    assert page.get_by_role("button", name="Sign in").is_visible()
