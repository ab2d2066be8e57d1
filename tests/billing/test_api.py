"""The billing REST API: what each reader sees of a month, the statements and the price book, and how
it refuses hostile input (4xx, a clear message, nothing changed)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department, Team
from portfolio.audit.models import AuditEvent
from portfolio.billing import money, overview
from portfolio.billing.choices import StatementStatus
from portfolio.billing.models import Price, Statement
from portfolio.billing.statements import close
from tests.billing.world import label

pytestmark = pytest.mark.django_db

API = "/api/v1/billing"


def _get(call, world, role, url):
    response = call(world, role, "GET", API + url)
    assert response.status_code == 200, response.content[:500]
    return response.json()


# --- Spend ------------------------------------------------------------------------------------------
def test_an_admin_sees_each_departments_month_with_its_teams_and_subjects(world, call):
    spend = _get(call, world, "admin", f"/spend?month={label(world.past)}")
    departments = {row["name"]: row for row in spend["departments"]}
    assert Decimal(departments["Customer Operations"]["spend"]) == Decimal("18.00")
    assert Decimal(departments["Legal"]["spend"]) == Decimal("-5.00")  # the recovery of its endpoint
    assert Decimal(spend["total"]) == Decimal("13.00") and spend["partial"] is False
    teams = {row["name"]: Decimal(row["spend"]) for row in spend["teams"]}
    assert teams == {"Support AI": Decimal("8.00"), "Voice": Decimal("10.00"), "Contracts": Decimal("-5.00")}
    subjects = {(row["kind"], row["subject"]): Decimal(row["spend"]) for row in spend["subjects"]}
    assert subjects[("tokens", "contracts-ep")] == Decimal("5.00")
    assert subjects[("replica", "voice-dep")] == Decimal("10.00")


def test_a_finished_months_forecast_is_its_spend_and_its_days_add_up(world, call):
    spend = _get(call, world, "admin", f"/spend?month={label(world.past)}")
    assert spend["elapsed_fraction"] == 1.0 and Decimal(spend["forecast"]) == Decimal("13.00")
    assert len(spend["days"]) == money.days_in(world.past)
    days = [Decimal(amount) for amount in spend["day_totals"]]
    assert days[:3] == [Decimal("0.00"), Decimal("10.00"), Decimal("3.00")]  # the call: 5.00 - 5.00 credit
    assert Decimal(spend["not_in_days"]) == Decimal("0.00")
    support = next(row for row in spend["departments"] if row["name"] == "Customer Operations")
    assert [Decimal(a) for a in support["days"][:3]] == [Decimal("5.00"), Decimal("10.00"), Decimal("3.00")]
    assert support["tokens"][0] == 1_500_000


def test_a_team_owner_sees_only_their_teams_part_flagged_partial(world, call):
    spend = _get(call, world, "owner", f"/spend?month={label(world.past)}")
    assert [(row["name"], Decimal(row["spend"]), row["partial"]) for row in spend["departments"]] == [
        ("Customer Operations", Decimal("8.00"), True)
    ]
    assert [row["name"] for row in spend["teams"]] == ["Support AI"]
    assert "voice-dep" not in str(spend) and spend["partial"] is True


def test_a_department_manager_sees_their_department_whole_and_no_other(world, call):
    spend = _get(call, world, "manager", f"/spend?month={label(world.past)}")
    assert [(row["name"], row["partial"]) for row in spend["departments"]] == [("Customer Operations", False)]
    assert {row["name"] for row in spend["teams"]} == {"Support AI", "Voice"}


def test_the_forecast_is_the_run_rate_to_the_months_end():
    month = money.month_start(timezone.now())
    start, end = money.month_bounds(month)
    a_quarter_in = start + (end - start) / 4
    assert overview.forecast(Decimal("10.00"), month, a_quarter_in) == Decimal("40.00")
    assert overview.forecast(Decimal("10.00"), month, start + timedelta(minutes=59)) is None
    assert overview.forecast(Decimal("10.00"), month, end + timedelta(days=3)) == Decimal("10.00")


def test_this_month_is_the_default(world, call):
    spend = _get(call, world, "admin", "/spend")
    assert spend["month"] == label(money.month_start(timezone.now()))


# --- Statements -------------------------------------------------------------------------------------
def test_the_list_has_the_current_drafts_then_the_stored_revisions(world, call):
    page = _get(call, world, "admin", "/statements")
    rows = [(row["cost_center"], row["month"], row["status"]) for row in page["items"]]
    current = label(money.month_start(timezone.now()))
    assert rows == [
        ("CC-100", current, "draft"),
        ("CC-200", current, "draft"),
        ("CC-100", label(world.closed_month), "closed"),
    ]
    assert page["count"] == 3 and page["items"][2]["sha256"] == world.statement.sha256


def test_the_list_pages_across_drafts_and_stored_revisions(world, call):
    second = _get(call, world, "admin", "/statements?page=2&page_size=2")
    assert [row["status"] for row in second["items"]] == ["closed"] and second["count"] == 3
    only_closed = _get(call, world, "admin", "/statements?status=closed&department=cc-100")
    assert [row["id"] for row in only_closed["items"]] == [world.statement.pk]


def test_a_team_owner_lists_their_departments_statements_with_their_teams_totals(world, call):
    page = _get(call, world, "owner", "/statements")
    assert {row["cost_center"] for row in page["items"]} == {"CC-100"}
    assert all(row["partial"] for row in page["items"])


def test_a_statement_page_has_its_lines_and_an_owner_gets_only_their_teams(world, call):
    whole = _get(call, world, "manager", f"/statements/CC-100/{label(world.past)}")
    assert whole["status"] == "draft" and Decimal(whole["total"]) == Decimal("18.00")
    assert {line["team"] for line in whole["lines"]} == {"Support AI", "Voice"}
    part = _get(call, world, "owner", f"/statements/cc-100/{label(world.past)}")
    assert part["partial"] is True and Decimal(part["total"]) == Decimal("8.00")
    assert {line["team"] for line in part["lines"]} == {"Support AI"}
    assert [line["position"] for line in part["lines"]] == list(range(1, len(part["lines"]) + 1))


def test_an_admin_reissues_a_closed_statement_with_an_audited_reason(world, call):
    response = call(world, "admin", "POST", f"{API}/statements/{world.statement.pk}/reissue",
                    {"reason": "Replica hours recorded late."})  # fmt: skip
    assert response.status_code == 201, response.content
    fresh = response.json()
    assert fresh["revision"] == 2 and fresh["status"] == "closed" and fresh["id"] != world.statement.pk
    assert Statement.objects.get(pk=world.statement.pk).status == StatementStatus.SUPERSEDED
    event = AuditEvent.objects.get(action="statement.reissue")
    assert event.after["reason"] == "Replica hours recorded late." and event.actor_label == "admin"
    old = _get(call, world, "auditor", f"/statements/CC-100/{label(world.closed_month)}?revision=1")
    assert old["status"] == "superseded"


# --- Price book -------------------------------------------------------------------------------------
def test_prices_are_listed_by_kind_and_subject_and_filtered(world, call):
    page = _get(call, world, "owner", "/prices?kind=pool")
    assert [(row["subject_name"], row["rates"]["cpu_core_hour"]) for row in page["items"]] == [
        ("local-cpu", "0.500000")
    ]
    assert _get(call, world, "auditor", "/prices?subject=contracts-ep")["count"] == 1


def test_the_subjects_are_what_can_be_priced_with_the_price_in_force(world, call):
    page = _get(call, world, "manager", "/prices/subjects?kind=pool")
    assert [(row["name"], row["rates"]) for row in page["items"]] == [
        ("local-cpu", {"gpu_hour": "0.000000", "cpu_core_hour": "0.500000", "memory_gib_hour": "0.000000"})
    ]


def test_an_admin_sets_a_price_and_it_is_audited_with_before_and_after(world, call):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    response = call(world, "admin", "POST", f"{API}/prices", {
        "kind": "pool", "subject": "local-cpu", "effective_from": hour.isoformat(), "gpu_hour": "2.5",
    })  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["rates"] == {"gpu_hour": "2.500000", "cpu_core_hour": "0.500000",
                                        "memory_gib_hour": "0.000000"}  # fmt: skip
    event = AuditEvent.objects.filter(action="price.set").latest("sequence")
    assert Decimal(event.before["cpu_core_hour"]) == Decimal("0.5")
    assert Decimal(event.after["gpu_hour"]) == Decimal("2.5")


# --- Hostile input ----------------------------------------------------------------------------------
def _unchanged(world):
    return (Price.objects.count(), Statement.objects.count(), AuditEvent.objects.count())


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("/spend?month=2026-13", 400, "YYYY-MM"),
        ("/spend?month=1999-12", 400, "YYYY-MM"),
        ("/spend?month=20261", 400, "YYYY-MM"),
        ("/spend?month=2026-01-01", 422, "month"),
        ("/spend?month=2999-12", 400, "has not begun"),
        ("/prices?page_size=100000", 422, "page_size"),
        ("/prices?page=0", 422, "page"),
        ("/prices?kind=galaxy", 422, "kind"),
        ("/prices/subjects?page_size=201", 422, "page_size"),
        ("/statements?page_size=1000000", 422, "page_size"),
        ("/statements?page=99999999999", 422, "page"),
        ("/statements?status=open", 400, "status"),
        ("/statements?month=2026-00", 400, "YYYY-MM"),
        ("/statements/CC-100/last-month", 400, "YYYY-MM"),
        ("/statements/CC-100/2026-11?revision=0", 422, "revision"),
        ("/statements/NO-SUCH/2026-11", 404, "Department not found"),
        ("/statements/%00%00/2026-11", 404, "Department not found"),
    ],
)
def test_hostile_reads_are_refused_with_a_clear_message(world, call, url, status, says):
    response = call(world, "admin", "GET", API + url)
    assert response.status_code == status, response.content
    assert says in response.json()["error"]["message"] + str(response.json()["error"].get("fields", ""))


def test_a_revision_that_does_not_exist_is_404(world, call):
    response = call(world, "admin", "GET", f"{API}/statements/CC-100/{label(world.closed_month)}?revision=7")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "-1"}, 422, "cpu_core_hour"),
        ({"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "1e12"}, 422, "cpu_core_hour"),
        ({"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "0.0000001"}, 422, "cpu_core_hour"),
        ({"kind": "pool", "subject": "local-cpu", "cpu_core_hour": "NaN"}, 422, "cpu_core_hour"),
        ({"kind": "pool", "subject": "local-cpu", "effective_from": "{half_past}", "gpu_hour": "1"}, 400,
         "on the hour"),
        # 10:00 in India is 04:30 UTC: inside the hour the token ledger is cut by.
        ({"kind": "pool", "subject": "local-cpu", "effective_from": "{on_the_hour_in_india}", "gpu_hour": "1"},
         400, "on the hour"),
        ({"kind": "pool", "subject": "local-cpu", "effective_from": "{closed}", "gpu_hour": "1"}, 400,
         "already closed"),
        ({"kind": "pool", "subject": "no-such-pool", "gpu_hour": "1"}, 400, "no-such-pool"),
        ({"kind": "store", "subject": "{store}", "gpu_hour": "1"}, 400, "gib_month"),
        ({"kind": "galaxy", "subject": "local-cpu"}, 422, "kind"),
        ({"kind": "pool", "subject": "x" * 101}, 422, "subject"),
        ({"kind": "pool", "subject": "local-cpu", "note": "n" * 201}, 422, "note"),
    ],
)  # fmt: skip
def test_hostile_prices_are_refused_and_change_nothing(world, call, settings, body, status, says):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    values = {
        "{half_past}": (hour + timedelta(minutes=30)).isoformat(),
        "{on_the_hour_in_india}": (hour + timedelta(minutes=30))
        .astimezone(timezone.get_fixed_timezone(330))
        .isoformat(),
        "{closed}": money.month_bounds(world.closed_month)[0].isoformat(),
        "{store}": settings.ARTIFACT_STORE,
    }
    body = {key: values.get(value, value) for key, value in body.items()}
    before = _unchanged(world)
    response = call(world, "admin", "POST", f"{API}/prices", body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert says in error["message"] + str(error.get("fields", ""))
    assert _unchanged(world) == before


@pytest.mark.parametrize(
    ("statement", "body", "status"),
    [
        ("{id}", {"reason": "short"}, 400),
        ("{id}", {"reason": "x" * 2001}, 422),
        ("{id}", {}, 422),
        ("999999", {"reason": "Replica hours recorded late."}, 404),
        ("-1", {"reason": "Replica hours recorded late."}, 404),
        ("99999999999999999999", {"reason": "Replica hours recorded late."}, 404),
    ],
)
def test_hostile_reissues_are_refused_and_change_nothing(world, call, statement, body, status):
    before = _unchanged(world)
    url = f"{API}/statements/{statement.replace('{id}', str(world.statement.pk))}/reissue"
    response = call(world, "admin", "POST", url, body)
    assert response.status_code == status, response.content
    assert response.json()["error"]["message"]
    assert _unchanged(world) == before


# --- Queries ----------------------------------------------------------------------------------------
def _queries(client, world, role, url) -> int:
    """The queries of one request of a signed-in ``role`` (the session's own included)."""
    client.force_login(world.users[role])
    client.get(API + url)  # the session's first write is not the page's
    with CaptureQueriesContext(connection) as queries:
        response = client.get(API + url)
    assert response.status_code == 200
    return len(queries)


def _more_prices_and_statements(world):
    from portfolio.billing import subjects
    from portfolio.billing.services import set_price
    from tests.conftest import actor_for

    admin = actor_for(world.users["admin"])
    start = money.month_bounds(world.past)[0]
    for hour in range(1, 21):
        set_price(actor=admin, subject=subjects.Subject("endpoint", str(600 + hour), f"ep-{hour}"),
                  effective_from=start + timedelta(hours=hour), input_per_million=Decimal(hour))  # fmt: skip
    earlier = world.closed_month
    for _ in range(3):
        earlier = money.month_start(earlier - timedelta(days=1))
        close(Actor.for_system("tests"), world.department, earlier)
        close(Actor.for_system("tests"), world.other_department, earlier)


@pytest.mark.parametrize(
    ("url", "role", "pinned"),
    [
        ("/prices", "auditor", 6),
        ("/prices/subjects", "manager", 9),  # what a manager (in no team) may see, their departments' too
        ("/statements?status=closed", "owner", 9),  # one more: the totals of the owner's teams' lines
        ("/statements?status=closed", "admin", 5),
    ],
)
def test_list_queries_are_pinned_and_do_not_grow_with_the_rows(world, client, url, role, pinned):
    assert _queries(client, world, role, url) == pinned
    _more_prices_and_statements(world)
    assert _queries(client, world, role, url) == pinned


def test_a_page_of_drafts_computes_only_the_drafts_on_it(world, client):
    # Each draft on the page is its department's month computed from the ledger (statements.compute).
    assert _queries(client, world, "owner", "/statements?page_size=1") == 23
    assert _queries(client, world, "owner", "/statements?page=2&page_size=1") == 11


def test_the_spend_page_reads_the_ledger_in_queries_that_do_not_grow_with_the_departments(world, client):
    url = f"/spend?month={label(world.past)}"
    assert _queries(client, world, "admin", url) == 24
    assert _queries(client, world, "owner", url) == 26  # and what the owner reads of their teams
    for n in range(5):
        department = Department.objects.create(name=f"Extra {n}", cost_center=f"CC-X{n}")
        Team.objects.create(department=department, name=f"Extra team {n}", slug=f"extra-{n}")
    assert _queries(client, world, "admin", url) == 24


def test_an_at_cost_share_has_no_day_and_is_what_the_days_leave_out(world, call):
    from portfolio.billing import meters
    from portfolio.billing.choices import ComputeKind

    start = money.month_bounds(world.past)[0]
    hour = start + timedelta(hours=5)
    # Contracts serves an unpriced endpoint from a 1-core replica for 4 hours (2.00); only Support AI calls it.
    meters.replace_token_hours(hour, hour + timedelta(hours=1), [
        meters.TokenHour(hour, 502, "free-ep", world.other_team.pk, world.other_department.pk, "free-dep",
                         world.team.pk, world.department.pk, 1, 1000, 1000),
    ])  # fmt: skip
    meters.record_interval(
        key="replica:2", kind=ComputeKind.REPLICA, team_id=world.other_team.pk,
        department_id=world.other_department.pk, subject="free-dep", pool_id=world.pool.pk, pool=world.pool.name,
        gpus=0, cpu_cores=1, memory_bytes=0, started_at=hour, ended_at=hour + timedelta(hours=4),
    )  # fmt: skip
    spend = _get(call, world, "admin", f"/spend?month={label(world.past)}")
    support = next(row for row in spend["departments"] if row["name"] == "Customer Operations")
    assert Decimal(support["spend"]) == Decimal("20.00")  # 18.00 + its at-cost share
    assert Decimal(support["spend"]) - sum(Decimal(day) for day in support["days"]) == Decimal("2.00")
    legal = next(row for row in spend["departments"] if row["name"] == "Legal")
    assert Decimal(legal["days"][0]) == Decimal("-3.00")  # its replica 2.00, the priced call's credit -5.00
    assert Decimal(spend["not_in_days"]) == Decimal("0.00")  # the share and its credit cancel out
