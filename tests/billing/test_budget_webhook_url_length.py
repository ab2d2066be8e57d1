"""A budget's webhook URL may be as long as set_budget, the API and the form say (500 characters): the column
held 200, so a longer URL (a Teams or Power Automate one is often 300 and more) passed every check and then
failed at save, a 500 with the form's input lost (found by review)."""

from __future__ import annotations

import pytest

from portfolio.billing import budgets
from portfolio.billing.models import Budget

pytestmark = pytest.mark.django_db


def test_a_webhook_url_of_300_characters_is_saved_through_the_api(client, org, team):
    url = "https://hooks.example.com/" + "a" * (300 - len("https://hooks.example.com/"))
    client.force_login(org["admin"])
    response = client.put(
        f"/api/v1/billing/budgets/teams/{team.pk}",
        {"amount": "100", "webhook_url": url},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content[:300]
    assert Budget.objects.get(team=team).webhook_url == url


def test_the_longest_url_the_checks_accept_fits_the_column():
    assert budgets.MAX_URL == Budget._meta.get_field("webhook_url").max_length == 500
