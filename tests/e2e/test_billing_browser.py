"""A real browser (Debian's Chromium driven by Playwright): an admin sets an endpoint's price on the price
book page, a call to it is recorded in billing's ledger, and the admin sees the call on the calling
department's draft statement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portfolio.accounts.models import Department, Team
from portfolio.billing import meters
from portfolio.billing.meters import TokenHour
from portfolio.billing.models import Price
from serving.models import Endpoint
from tests.conftest import PASSWORD
from tests.e2e import test_browser

pytestmark = pytest.mark.e2e
browser_page = test_browser.browser_page  # the same Chromium page fixture as the other browser test


@pytest.mark.django_db(transaction=True)
def test_an_admin_sets_a_price_and_sees_a_call_on_the_draft_statement(
    live_server, make_user, browser_page, tmp_path
):
    make_user("alice", superuser=True)
    operations = Department.objects.create(name="Customer Operations", cost_center="CC-100")
    legal = Department.objects.create(name="Legal", cost_center="CC-200")
    owner = Team.objects.create(department=operations, name="Support AI", slug="support-ai")
    caller = Team.objects.create(department=legal, name="Contracts", slug="contracts")
    endpoint = Endpoint.objects.create(name="support", owner_team=owner)
    page = browser_page

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing", exact=True).click()
    page.wait_for_url(f"{live_server.url}/billing/")
    page.get_by_role("link", name="Price book").click()
    page.wait_for_url(f"{live_server.url}/billing/prices/")
    page.get_by_label("Kind").select_option("endpoint")
    page.get_by_label("Subject").select_option(f"endpoint:{endpoint.pk}")
    page.get_by_label("Input, per million tokens").fill("2")
    page.get_by_label("Output, per million tokens").fill("4")
    page.get_by_label("Note").fill("launch price")
    page.get_by_role("button", name="Set price").click()
    page.wait_for_url(f"{live_server.url}/billing/prices/")
    assert page.get_by_text("New price of support").is_visible()
    price = Price.objects.get(kind="endpoint", subject_id=str(endpoint.pk))
    assert (price.input_per_million, price.output_per_million, price.note) == (2, 4, "launch price")

    # A call from the Contracts team in this hour, as the gateway's usage rollup hands it to billing.
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    meters.replace_token_hours(
        hour,
        hour + timedelta(hours=1),
        [TokenHour(hour, endpoint.pk, "support", owner.pk, operations.pk, "support-bot", caller.pk, legal.pk,
                   1, 1_000_000, 250_000)],
    )  # fmt: skip

    page.goto(f"{live_server.url}/billing/statements/")
    page.get_by_role("row", name="Legal").get_by_role("link").click()
    page.wait_for_url(f"{live_server.url}/billing/statements/CC-200/{hour:%Y-%m}/")
    assert page.get_by_text("draft", exact=True).first.is_visible()
    inputs = page.locator("tr", has_text="input tokens")
    outputs = page.locator("tr", has_text="output tokens")
    # 1M input tokens at 2 and 250k output tokens at 4 a million: 2.00 and 1.00.
    assert "support" in inputs.inner_text() and "2.00" in inputs.inner_text()
    assert "1.00" in outputs.inner_text()
    assert page.get_by_test_id("statement-total").inner_text() == "3.00 EUR"
    page.screenshot(path=str(tmp_path / "statement.png"), full_page=True)
