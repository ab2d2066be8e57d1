"""The usage dashboard of API keys: rolled-up numbers and charts, filters, each reader shown only the teams
it may read. The key pages are tests/gateway/test_views.py."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from serving.gateway import services
from tests.conftest import actor_for
from tests.gateway.usage_rows import rollup, this_hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_gateway_processes")]

HTMX = {"HTTP_HX_REQUEST": "true"}


# --- Usage -----------------------------------------------------------------------------------------
def test_the_usage_page_shows_rolled_up_numbers(signed_in, org, key):
    rollup(key, this_hour(), requests=1200, errors=12, input_tokens=40_000, output_tokens=9_000)
    rollup(
        key,
        this_hour(48),
        endpoint="ticket-triage",
        requests=300,
        errors=0,
        input_tokens=6_000,
        output_tokens=1_000,
    )
    response = signed_in(org["viewer"]).get(reverse("usage"))
    assert response.status_code == 200
    totals = response.context["totals"]
    assert (totals["requests"], totals["errors"]) == (1500, 12)
    assert (totals["input_tokens"], totals["output_tokens"], totals["tokens"]) == (46_000, 10_000, 56_000)
    assert totals["error_rate"] == "0.8"
    page = response.content.decode()
    assert "1,500" in page and "56,000" in page
    assert {row["group"]: row["requests"] for row in response.context["by_endpoint"]} == {
        "support-bot": 1200,
        "ticket-triage": 300,
    }
    assert [(row["key"], row["requests"]) for row in response.context["by_key"]] == [(key, 1500)]
    assert [row["team"].pk for row in response.context["by_team"]] == [key.team_id]
    assert len(response.context["daily"]) == 30
    assert sum(day["requests"] for day in response.context["daily"]) == 1500


def test_a_speech_keys_month_shows_its_seconds_of_audio_on_the_list_and_its_page(signed_in, org, key):
    rollup(key, this_hour(), endpoint="whisper", requests=3, input_tokens=0, output_tokens=0, audio_ms=90_500)
    client = signed_in(org["developer"])
    listed = client.get(reverse("apikey-list"))
    assert re.search(r'data-testid="key-audio"[^>]*>90\.5 s audio<', listed.content.decode())
    assert listed.context["sections"][0]["keys"][0].month_audio_seconds == Decimal("90.5")
    page = client.get(reverse("apikey-edit", args=[key.pk])).content.decode()
    assert re.search(r'data-testid="key-audio">90\.5 s<', page)


def test_the_usage_page_shows_speech_calls_in_seconds_of_audio_not_as_zero_tokens(signed_in, org, key):
    rollup(key, this_hour(), endpoint="whisper", requests=3, input_tokens=0, output_tokens=0, audio_ms=7_500)
    rollup(key, this_hour(), requests=5)
    response = signed_in(org["viewer"]).get(reverse("usage"))
    assert response.context["totals"]["audio_seconds"] == Decimal("7.5")
    by_endpoint = {row["group"]: row["audio_seconds"] for row in response.context["by_endpoint"]}
    assert by_endpoint == {"whisper": Decimal("7.5"), "support-bot": 0}
    assert response.context["daily"][-1]["audio_seconds"] == Decimal("7.5")
    page = response.content.decode()
    assert re.search(r'data-testid="audio-seconds">7\.5 s<', page)
    # By team, endpoint and key, and per day.
    assert page.count('<th scope="col" class="num">Audio</th>') == 4
    assert page.count('<td class="num">7.5 s</td>') == 4


def test_a_page_of_text_only_usage_gets_no_audio_column(signed_in, org, key):
    rollup(key, this_hour())
    page = signed_in(org["viewer"]).get(reverse("usage")).content.decode()
    assert ">Audio</th>" not in page and 'data-testid="audio-seconds"' not in page


def test_daily_latency_percentiles_are_weighted_by_requests(signed_in, org, key):
    rollup(key, this_hour(), requests=30, latency_p50_ms=100, latency_p95_ms=300)
    rollup(key, this_hour(), endpoint="ticket-triage", requests=10, latency_p50_ms=500, latency_p95_ms=900)
    today = signed_in(org["owner"]).get(reverse("usage")).context["daily"][-1]
    assert (today["p50"], today["p95"]) == (200, 450)


def test_an_outsider_does_not_see_team_a_numbers(signed_in, org, key, other_key):
    rollup(key, this_hour(), requests=4242, endpoint="support-bot")
    rollup(other_key, this_hour(), requests=17, endpoint="clause-finder")
    client = signed_in(org["outsider"])
    response = client.get(reverse("usage"))
    assert response.context["totals"]["requests"] == 17
    page = response.content.decode()
    assert "4,242" not in page and "support-bot" not in page and key.name not in page
    # Nor by naming team A or its key in the filters.
    refused = client.get(reverse("usage"), {"team": key.team_id, "key": key.pk})
    assert "totals" not in refused.context
    assert "4,242" not in refused.content.decode()


def test_a_department_manager_sees_the_usage_of_its_teams_and_not_of_others(
    signed_in, org, key, other_key, make_user, department
):
    from portfolio.accounts.models import DepartmentRole

    rollup(key, this_hour(), requests=4242, endpoint="support-bot")
    rollup(other_key, this_hour(), requests=17, endpoint="clause-finder")
    manager = make_user("cc100-manager")
    DepartmentRole.objects.create(user=manager, department=department)
    response = signed_in(manager).get(reverse("usage"))
    assert response.context["totals"]["requests"] == 4242
    assert "clause-finder" not in response.content.decode()


def test_a_department_manager_outside_the_team_sees_no_key_name_on_the_policy_or_usage_page(
    signed_in, org, team, key, make_user, department
):
    from portfolio.accounts.models import DepartmentRole

    services.update_key_policy(actor=actor_for(org["owner"]), team=team, rpm_limit=30)  # the key has 60
    rollup(key, this_hour(), requests=4242)
    manager = make_user("cc100-manager")
    DepartmentRole.objects.create(user=manager, department=department)
    client = signed_in(manager)
    assert client.get(reverse("apikey-edit", args=[key.pk])).status_code == 404
    for url in (reverse("apikey-policy", args=[team.slug]), reverse("usage")):
        page = client.get(url)
        assert page.status_code == 200
        assert key.name not in page.content.decode() and key.display_prefix not in page.content.decode()
    assert "4,242" in page.content.decode()  # the team's usage itself is the manager's to see
    assert "a key you cannot see" in page.content.decode()
    owner_page = signed_in(org["owner"]).get(reverse("apikey-policy", args=[team.slug])).content.decode()
    assert key.name in owner_page and key.display_prefix in owner_page


def test_the_charts_render_svg(signed_in, org, key):
    for day in range(10):
        rollup(key, this_hour(24 * day), requests=10 + day, input_tokens=100 * day, output_tokens=50)
    response = signed_in(org["developer"]).get(reverse("usage"), {"days": "7"})
    page = response.content.decode()
    assert page.count('<svg class="chart') == 4
    assert 'class="chart-bar chart-bar--input"' in page
    assert 'class="chart-line chart-line--p95"' in page
    assert len(response.context["daily"]) == 7
    # No inline style or script in the charts (CSP).
    charts = page[page.index('<div class="grid-2 usage-charts">') :]
    assert "style=" not in charts and "<script" not in charts
    assert "{#" not in page and "{%" not in page


def test_filters_narrow_the_figures_and_htmx_gets_only_the_results(signed_in, org, team, key):
    second, _ = services.create_key(actor=actor_for(org["owner"]), team=team, name="batch")
    rollup(key, this_hour(), requests=5)
    rollup(second, this_hour(), requests=8)
    response = signed_in(org["owner"]).get(reverse("usage"), {"key": second.pk, "days": "90"}, **HTMX)
    assert response.context["totals"]["requests"] == 8
    assert response.context["period"] == 90
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="usage-results"')
    assert "<html" not in page


def test_the_key_filter_offers_the_keys_that_called_lately_not_every_key(signed_in, org, team, key):
    """The key filter listed every key the actor could see, revoked and idle ones too: thousands of options
    in an organisation's page. It offers those with usage in the window, and a key a link names."""
    idle, _ = services.create_key(actor=actor_for(org["owner"]), team=team, name="idle")
    rollup(key, this_hour(), requests=5)
    client = signed_in(org["owner"])
    offered = list(client.get(reverse("usage")).context["form"].fields["key"].queryset)
    assert offered == [key]
    linked = client.get(reverse("usage"), {"key": idle.pk})
    assert linked.status_code == 200 and linked.context["form"].is_valid()
    assert set(linked.context["form"].fields["key"].queryset) == {idle, key}


def test_with_no_usage_the_page_says_when_it_will_appear(signed_in, org, key):
    page = signed_in(org["developer"]).get(reverse("usage")).content.decode()
    assert "No usage yet" in page
    assert "about a minute after the first calls" in page
    assert '<svg class="chart' not in page


def test_the_usage_page_reads_the_rollups_not_the_events(signed_in, org, key):
    rollup(key, this_hour())
    with CaptureQueriesContext(connection) as queries:
        signed_in(org["owner"]).get(reverse("usage"))
    assert not [q["sql"] for q in queries if "gateway_usageevent" in q["sql"]]


def test_the_dashboard_links_the_pages_that_exist(signed_in, org):
    response = signed_in(org["developer"]).get(reverse("dashboard"))
    page = response.content.decode()
    assert f'href="{reverse("apikey-list")}"' in page
    assert f'href="{reverse("usage")}"' in page
    assert f'href="{reverse("deployment-list")}"' in page
    # "coming soon" only for the parts of the platform with no page yet.
    unbuilt = [c for c in response.context["capabilities"] if not c["available"]]
    assert page.count("coming soon") == len(unbuilt)
    assert "API keys, usage and billing" not in {c["name"] for c in unbuilt}
