"""The budgets' pages: a department's managers set all of a team's budget through the form, its owners see
only the amount, alerts and notifications and are held to the ceiling, admins set departments'. Refusals
come back on the form (400) and change nothing; every change is audited. The permission matrix of these
pages is in tests/test_route_permissions.py (tests/billing/route_rules.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from portfolio.accounts.models import DepartmentRole
from portfolio.audit.models import AuditEvent
from portfolio.billing import budgets
from portfolio.billing.models import Budget
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager(make_user, department):
    user = make_user("manager")
    DepartmentRole.objects.create(user=user, department=department, role="manager")
    return user


def form_of(team) -> str:
    return reverse("billing-team-budget", args=[team.pk])


def test_a_manager_sets_a_teams_budget_with_its_ceiling_and_hard_limit(signed_in, manager, team):
    client = signed_in(manager)
    page = client.get(form_of(team))
    assert (
        page.status_code == 200 and b'name="ceiling"' in page.content and b'name="hard_limit"' in page.content
    )

    response = client.post(
        form_of(team),
        {
            "amount": "300",
            "ceiling": "400",
            "hard_limit": "on",
            "thresholds": "80, 50",
            "notify_emails": "fin@example.com\nops@example.com",
            "webhook_url": "",
        },
    )

    assert response.status_code == 302 and response["Location"] == reverse("billing-budgets")
    budget = Budget.objects.get(team=team)
    assert (budget.amount, budget.ceiling, budget.hard_limit) == (Decimal("300"), Decimal("400"), True)
    assert budget.thresholds == [50, 80] and budget.notify_emails == ["fin@example.com", "ops@example.com"]
    event = AuditEvent.objects.get(action="budget.set")
    assert event.actor_label == "manager" and event.after["ceiling"] == "400.00"
    listing = client.get(reverse("billing-budgets"))
    assert listing.status_code == 200 and b"Support AI" in listing.content and b"400.00" in listing.content


def test_an_owner_sees_no_ceiling_or_hard_limit_and_is_held_to_the_ceiling(signed_in, org, manager, team):
    budgets.set_budget(actor=actor_for(manager), team=team, amount="300", ceiling="400", hard_limit=True)
    client = signed_in(org["owner"])
    page = client.get(form_of(team))
    assert page.status_code == 200
    assert b'name="ceiling"' not in page.content and b'name="hard_limit"' not in page.content
    assert b"up to the ceiling of 400.00" in page.content

    above = client.post(form_of(team), {"amount": "401", "thresholds": "100"})
    assert above.status_code == 400 and b"at most the ceiling of 400.00" in above.content
    # Fields the form does not show are not taken from the request either.
    kept = client.post(form_of(team), {"amount": "350", "thresholds": "100", "ceiling": "", "hard_limit": ""})
    assert kept.status_code == 302
    budget = Budget.objects.get(team=team)
    assert (budget.amount, budget.ceiling, budget.hard_limit, budget.thresholds) == (
        Decimal("350"),
        Decimal("400"),
        True,
        [100],
    )
    assert AuditEvent.objects.filter(action="budget.set").count() == 2  # the manager's and the owner's


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"amount": "-1"}, b"greater than or equal to 0"),
        ({"amount": "1e12"}, b"less than or equal to"),
        ({"amount": "10.001"}, b"decimal places"),
        ({"thresholds": "fifty"}, b"Whole percentages"),
        ({"thresholds": "80, ²"}, b"Whole percentages"),  # "²".isdigit(), but int() refuses it
        ({"thresholds": "0"}, b"whole percentages from 1 to 200"),
        ({"notify_emails": "not-an-address"}, b"is not an e-mail address"),
        ({"notify_emails": ",".join(f"u{i}@example.com" for i in range(21))}, b"at most 20 addresses"),
        ({"webhook_url": "http://127.0.0.1:8000/hook"}, b"this host is internal"),
        ({"webhook_url": "ftp://example.com/"}, b"use an http:// or https:// URL"),
    ],
)
def test_hostile_input_comes_back_on_the_form_and_changes_nothing(signed_in, manager, team, fields, error):
    response = signed_in(manager).post(form_of(team), {"amount": "100", "thresholds": "80", **fields})
    assert response.status_code == 400 and error in response.content
    assert not Budget.objects.exists() and not AuditEvent.objects.filter(action="budget.set").exists()


def test_only_a_manager_or_an_admin_removes_a_teams_budget(signed_in, org, manager, team):
    budgets.set_budget(actor=actor_for(manager), team=team, amount="300")
    remove = reverse("billing-team-budget-delete", args=[team.pk])
    assert signed_in(org["owner"]).post(remove).status_code == 403
    assert signed_in(org["engineer"]).post(remove).status_code == 403
    assert signed_in(org["outsider"]).post(remove).status_code == 404
    assert Budget.objects.filter(team=team).exists()

    assert signed_in(manager).post(remove).status_code == 302
    assert not Budget.objects.filter(team=team).exists()
    assert AuditEvent.objects.get(action="budget.delete").actor_label == "manager"


def test_only_an_admin_sets_a_departments_budget(signed_in, org, manager, department):
    url = reverse("billing-department-budget", args=[department.pk])
    assert signed_in(manager).post(url, {"amount": "1000", "thresholds": "80"}).status_code == 403
    assert signed_in(org["owner"]).get(url).status_code == 403
    page = signed_in(org["admin"]).get(url)
    assert page.status_code == 200 and b'name="ceiling"' not in page.content  # a department has none
    assert signed_in(org["admin"]).post(url, {"amount": "1000", "thresholds": "80"}).status_code == 302
    assert Budget.objects.get(department=department).amount == Decimal("1000")


def test_the_list_shows_only_what_the_reader_reads_and_where_they_may_set_one(
    signed_in, org, team, other_team
):
    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=other_team, amount="777")
    client = signed_in(org["owner"])
    listing = client.get(reverse("billing-budgets"))
    assert listing.status_code == 200
    assert b"777" not in listing.content and b"Contracts" not in listing.content  # another department's team
    assert form_of(team).encode() in listing.content  # "Set a budget for team Support AI"
    assert signed_in(org["engineer"]).get(reverse("billing-budgets")).status_code == 403
