"""A real browser (Debian's Chromium driven by Playwright) and a real gateway process: an admin sets the price
of Customer Operations' endpoint on the price book page; a key of Legal's Contracts team, with whose
department the endpoint is shared, calls it through the gateway (served by the gateway tests' stand-in
engine, which answers and counts tokens like vLLM); the usage pipeline runs as Celery beat runs it (the
flush from the Redis stream into PostgreSQL, then the hourly rollup into billing's ledger); and the admin
sees the call on Legal's draft statement, at the price set and for the tokens the call really used. And a
department manager sets a team's budget on the budgets page, which the team's owner may lower but not raise
past its ceiling."""

from __future__ import annotations

import time
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal

import openai
import pytest
from django.utils import timezone

from portfolio.accounts.models import DepartmentRole
from portfolio.billing.models import Budget, Price
from serving import services
from serving.gateway import tasks
from serving.gateway.models import UsageEvent
from tests.conftest import PASSWORD, actor_for
from tests.e2e import test_browser
from tests.gateway import conftest as gateway_fixtures

pytestmark = pytest.mark.e2e
browser_page = test_browser.browser_page  # the same Chromium page fixture as the other browser test
# The gateway tests' own: the gateway process, and a deployment served by a stand-in engine, its endpoint, keys.
gateway_process = gateway_fixtures.gateway_process
gateway_url = gateway_fixtures.gateway_url
stack = gateway_fixtures.stack
INPUT_PRICE, OUTPUT_PRICE = "1000", "2000"  # per million tokens: a short call still costs cents


def charged(tokens: int, per_million: str) -> str:
    """What ``tokens`` cost at ``per_million``, rounded to the cent half away from zero, as a line shows it."""
    amount = Decimal(tokens) * Decimal(per_million) / 1_000_000
    return str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def millions(tokens: int) -> str:
    return f"{(Decimal(tokens) / 1_000_000).normalize():f}"


@pytest.mark.django_db(transaction=True)
def test_an_admin_sets_a_price_makes_a_call_and_sees_it_on_the_draft_statement(
    live_server, org, team, other_team, other_department, gateway_url, stack, browser_page, tmp_path
):
    deployment, _ = stack["deployment"]("support-bot", owner=team)
    endpoint = stack["endpoint"]("support", deployment, owner=team)  # no price yet: the admin sets it
    services.share_endpoint(actor=actor_for(org["admin"]), endpoint=endpoint, department=other_department)
    page = browser_page

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing", exact=True).click()
    page.wait_for_url(f"{live_server.url}/billing/")
    page.get_by_role("link", name="Price book").click()
    page.wait_for_url(f"{live_server.url}/billing/prices/")
    page.get_by_label("Kind").select_option("endpoint")
    page.get_by_label("Subject").select_option(f"endpoint:{endpoint.pk}")
    page.get_by_label("Input, per million tokens").fill(INPUT_PRICE)
    page.get_by_label("Output, per million tokens").fill(OUTPUT_PRICE)
    # A price starts at the next hour unless told: this one is set from this hour's start, so the call is priced.
    this_hour = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    page.get_by_label("Effective from").fill(f"{this_hour:%Y-%m-%dT%H:%M}")
    page.get_by_label("Note").fill("launch price")
    page.get_by_role("button", name="Set price").click()
    page.wait_for_url(f"{live_server.url}/billing/prices/")
    assert page.get_by_text("New price of support").is_visible()
    price = Price.objects.get(kind="endpoint", subject_id=str(endpoint.pk))
    assert (price.input_per_million, price.output_per_million, price.note, price.effective_from) == (
        Decimal(INPUT_PRICE),
        Decimal(OUTPUT_PRICE),
        "launch price",
        this_hour,
    )

    # The Contracts team calls the shared endpoint through the gateway, with the official SDK.
    secret = stack["key"](owner=other_team)
    gateway_fixtures.wait_for_model(gateway_url, secret, "support")
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=20)
    answer = client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "Is clause 7 enforceable?"}], max_tokens=40
    )
    used_in, used_out = answer.usage.prompt_tokens, answer.usage.completion_tokens
    assert used_in > 0 and used_out > 0

    # The pipeline, as Celery beat runs it: the stream into gateway_usageevent, then the hourly rollup. The
    # gateway answers first and settles after, so the flush runs until the call's event has come through.
    flushed, deadline = tasks.flush_usage(), time.monotonic() + 15
    while flushed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        flushed += tasks.flush_usage()
    assert flushed == 1
    event = UsageEvent.objects.get()
    assert (event.endpoint, event.team_id, event.input_tokens, event.output_tokens) == (
        "support",
        other_team.pk,
        used_in,
        used_out,
    )
    tasks.rollup_usage()

    page.goto(f"{live_server.url}/billing/statements/")
    page.get_by_role("row", name="Legal").get_by_role("link").click()
    page.wait_for_url(f"{live_server.url}/billing/statements/CC-200/{event.at:%Y-%m}/")
    assert page.get_by_text("draft", exact=True).first.is_visible()
    total = Decimal(0)
    for detail, tokens, rate in (
        ("input tokens", used_in, INPUT_PRICE),
        ("output tokens", used_out, OUTPUT_PRICE),
    ):
        # Kind, subject, detail, quantity, unit, unit price, amount: the tokens used, at the price set.
        amount = charged(tokens, rate)
        cells = page.locator("tr", has_text=detail).locator("td").all_inner_texts()
        assert cells[1:] == ["support", detail, millions(tokens), "M tokens", rate, amount]
        total += Decimal(amount)
    assert total > 0
    assert page.get_by_test_id("statement-total").inner_text() == f"{total} EUR"
    page.screenshot(path=str(tmp_path / "statement.png"), full_page=True)


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")


@pytest.mark.django_db(transaction=True)
def test_a_manager_sets_a_teams_budget_and_its_owner_may_only_lower_it(
    live_server, org, make_user, team, department, browser_page
):
    manager = make_user("manager")
    DepartmentRole.objects.create(user=manager, department=department, role="manager")
    page, base = browser_page, live_server.url

    sign_in(page, base, "manager")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing", exact=True).click()
    page.wait_for_url(f"{base}/billing/")
    page.get_by_role("link", name="Budgets").click()
    page.wait_for_url(f"{base}/billing/budgets/")
    page.get_by_role("link", name=f"Set a budget for team {team.name}").click()
    page.get_by_label("Amount").fill("300")
    page.get_by_label("Ceiling").fill("400")
    page.get_by_label("Hard limit").check()
    page.get_by_label("Thresholds").fill("50, 90")
    page.get_by_role("button", name="Save budget").click()
    page.wait_for_url(f"{base}/billing/budgets/")
    assert page.get_by_text(f"Budget of {team.name} saved.").is_visible()
    row = page.get_by_role("row", name=team.name)
    assert row.locator("td").all_inner_texts()[:3] == ["300.00", "400.00", "50%, 90%"]

    page.context.clear_cookies()
    sign_in(page, base, "owner")
    page.goto(f"{base}/billing/budgets/")
    page.get_by_role("row", name=team.name).get_by_role("link", name="Change").click()
    assert page.get_by_label("Ceiling").count() == 0 and page.get_by_label("Hard limit").count() == 0
    page.get_by_label("Amount").fill("450")
    page.get_by_role("button", name="Save budget").click()
    assert page.get_by_text("at most the ceiling of 400.00").is_visible()
    page.get_by_label("Amount").fill("350")
    page.get_by_role("button", name="Save budget").click()
    page.wait_for_url(f"{base}/billing/budgets/")
    budget = Budget.objects.get(team=team)
    assert (budget.amount, budget.ceiling, budget.hard_limit, budget.thresholds) == (
        Decimal("350"),
        Decimal("400"),
        True,
        [50, 90],
    )
