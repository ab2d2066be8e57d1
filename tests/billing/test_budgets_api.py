"""The budgets' REST API: a department's budget by an admin, a team's by its department's manager with a
ceiling and a hard limit, the owner within it, everyone else refused in the API's error shape (404 for what
they cannot see); each change audited; a PUT leaves what it does not name as it was."""

from __future__ import annotations

import pytest

from portfolio.accounts.models import DepartmentRole
from portfolio.audit.models import AuditEvent
from portfolio.billing.models import Budget

pytestmark = pytest.mark.django_db
API = "/api/v1/billing/budgets"


@pytest.fixture
def manager(make_user, department):
    user = make_user("manager")
    DepartmentRole.objects.create(user=user, department=department, role="manager")
    return user


def put(client, user, url: str, body: dict):
    client.force_login(user)
    return client.put(url, body, content_type="application/json")


def test_a_manager_sets_a_teams_budget_and_its_owner_lowers_it_within_the_ceiling(client, org, team, manager):
    response = put(
        client, manager, f"{API}/teams/{team.pk}", {"amount": "300", "ceiling": "400", "hard_limit": True}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["amount"], body["ceiling"], body["hard_limit"], body["name"]) == (
        "300.00",
        "400.00",
        True,
        team.slug,
    )
    assert body["thresholds"] == [50, 80, 100]
    owner_sets = put(client, org["owner"], f"{API}/teams/{team.pk}", {"amount": "350", "thresholds": [90]})
    assert owner_sets.status_code == 200, owner_sets.content
    kept = owner_sets.json()
    assert (kept["ceiling"], kept["hard_limit"], kept["thresholds"]) == ("400.00", True, [90])
    above = put(client, org["owner"], f"{API}/teams/{team.pk}", {"amount": "401"})
    assert above.status_code == 403 and "ceiling" in above.json()["error"]["message"]
    lifted = put(client, org["owner"], f"{API}/teams/{team.pk}", {"amount": "100", "ceiling": None})
    assert lifted.status_code == 403
    assert Budget.objects.get().amount == 350
    assert AuditEvent.objects.filter(action="budget.set").count() == 2


def test_only_an_admin_sets_a_departments_budget_and_the_list_shows_what_each_reads(
    client, org, team, department, other_department, manager
):
    url = f"{API}/departments/{department.pk}"
    assert put(client, manager, url, {"amount": "1000"}).status_code == 403
    assert put(client, org["admin"], url, {"amount": "1000"}).status_code == 200
    assert (
        put(client, org["admin"], f"{API}/departments/{other_department.pk}", {"amount": "5"}).status_code
        == 200
    )
    client.force_login(manager)
    names = [row["name"] for row in client.get(API).json()["items"]]
    assert names == [department.cost_center], "not the other department's"
    client.force_login(org["admin"])
    assert len(client.get(API).json()["items"]) == 2
    client.force_login(org["developer"])
    assert client.get(API).status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "-1"},
        {"amount": "1e12"},
        {"amount": "1.001"},
        {"amount": "10", "thresholds": list(range(1, 12))},
        {"amount": "10", "thresholds": [0]},
        {"amount": "10", "notify_emails": ["not an address"]},
        {"amount": "10", "webhook_url": "http://127.0.0.1/hook"},
        {"amount": "10", "webhook_url": "file:///etc/passwd"},
        {},
    ],
)
def test_hostile_budgets_are_refused_in_the_error_shape_and_change_nothing(client, org, team, body):
    response = put(client, org["admin"], f"{API}/teams/{team.pk}", body)
    assert response.status_code in (400, 422) and "error" in response.json(), response.content
    assert not Budget.objects.exists() and not AuditEvent.objects.filter(action="budget.set").exists()


def test_an_outsider_finds_no_team_and_only_a_manager_removes_a_teams_budget(client, org, team, manager):
    assert put(client, manager, f"{API}/teams/{team.pk}", {"amount": "300"}).status_code == 200
    assert put(client, org["outsider"], f"{API}/teams/{team.pk}", {"amount": "1"}).status_code == 404
    assert put(client, org["owner"], f"{API}/teams/999999", {"amount": "1"}).status_code == 404
    client.force_login(org["owner"])
    assert client.delete(f"{API}/teams/{team.pk}").status_code == 403
    client.force_login(org["outsider"])
    assert client.delete(f"{API}/teams/{team.pk}").status_code == 404
    client.force_login(manager)
    assert client.delete(f"{API}/teams/{team.pk}").status_code == 204
    assert not Budget.objects.exists() and AuditEvent.objects.filter(action="budget.delete").count() == 1
    assert client.delete(f"{API}/teams/{team.pk}").status_code == 404


def test_removing_a_budget_tells_a_caller_who_may_not_remove_it_nothing_of_whether_there_is_one(
    client, org, team, manager
):
    """An outsider is told the same of a team with a budget as of one without (here: none at all)."""

    def answer(response) -> tuple:
        return response.status_code, response.json()["error"]["code"], response.json()["error"]["message"]

    assert put(client, manager, f"{API}/teams/{team.pk}", {"amount": "300"}).status_code == 200
    assert (
        put(client, org["admin"], f"{API}/departments/{team.department_id}", {"amount": "900"}).status_code
        == 200
    )
    client.force_login(org["outsider"])
    assert answer(client.delete(f"{API}/teams/{team.pk}")) == answer(client.delete(f"{API}/teams/999999"))
    assert answer(client.delete(f"{API}/departments/{team.department_id}")) == answer(
        client.delete(f"{API}/departments/999999")
    )
    assert Budget.objects.count() == 2
