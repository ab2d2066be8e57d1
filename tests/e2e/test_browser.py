"""A real browser (Debian's Chromium driven by Playwright): sign in, create a team, see its audit row."""

from __future__ import annotations

import os
import shutil

import pytest

from portfolio.accounts.models import Department, Team
from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Chromium is missing: `make test` installs Debian's chromium package (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = (
        "true"  # Playwright's sync API runs an event loop in this thread
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.mark.django_db(transaction=True)
def test_admin_signs_in_creates_a_team_and_sees_the_audit_row(live_server, make_user, browser_page, tmp_path):
    make_user("alice", superuser=True)
    Department.objects.create(name="Customer Operations", cost_center="CC-100")
    page = browser_page

    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")

    page.goto(f"{live_server.url}/teams/new/")
    page.get_by_label("Department").select_option(label="Customer Operations (CC-100)")
    page.get_by_label("Name", exact=False).first.fill("Fraud Detection")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url(f"{live_server.url}/teams/fraud-detection/")
    assert page.get_by_role("heading", name="Fraud Detection").is_visible()

    page.goto(f"{live_server.url}/audit/?action=team.create")
    row = page.locator("table tr", has_text="team.create")
    assert row.count() == 1
    assert "Fraud Detection" in row.first.inner_text() and "alice" in row.first.inner_text()
    page.screenshot(path=str(tmp_path / "audit.png"))
    assert Team.objects.filter(slug="fraud-detection").exists()
