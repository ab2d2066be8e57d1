"""The billing pages: each renders for admin, auditor, department manager and team owner; an outsider is
refused; a team owner sees only their teams' lines; the price form is admins', and refuses bad input."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portfolio.accounts.models import DepartmentRole, Membership, Team
from portfolio.audit.models import AuditEvent
from portfolio.billing import costs, daily, meters, money, services
from portfolio.billing import statements as billing_statements
from portfolio.billing.choices import ComputeKind, PriceKind, StatementStatus
from portfolio.billing.models import Budget, ComputeInterval, Price, Statement
from portfolio.billing.overview import forecast
from portfolio.billing.subjects import Subject
from tests.conftest import actor_for

POOL = Subject(PriceKind.POOL, "7", "pool-a")


def _month_label() -> str:
    return timezone.now().strftime("%Y-%m")


@pytest.fixture
def world(org, team, other_team, department, make_user):
    """Two teams of one department with an hour of GPU each this month (2.00 per GPU-hour), a manager of
    the department, and a budget of the team."""
    search = Team.objects.create(department=department, name="Search", slug="search")
    manager = make_user("manager")
    DepartmentRole.objects.create(user=manager, department=department)
    search_owner = make_user("search-owner")
    Membership.objects.create(user=search_owner, team=search, role="owner")
    now = timezone.now()
    start = money.month_bounds(money.month_start(now))[0]
    services.set_price(actor=actor_for(org["admin"]), subject=POOL, effective_from=start, gpu_hour="2")
    # An hour in the month that has ended (the first hour of the month, or the hour before now).
    begin = max(start, now - timedelta(hours=1, minutes=5))
    for key, owner in (("replica:1", team), ("replica:2", search)):
        meters.record_interval(
            key=key, kind=ComputeKind.REPLICA, team_id=owner.pk, department_id=department.pk,
            subject=f"dep-{owner.slug}", pool_id=7, pool="pool-a", gpus=1, cpu_cores=0, memory_bytes=0,
            started_at=begin, ended_at=begin + min(timedelta(hours=1), now - begin),
        )  # fmt: skip
    Budget.objects.create(scope="team", team=team, amount=Decimal("100.00"))
    return {**org, "manager": manager, "search": search, "search_owner": search_owner, "readers": [
        org["admin"], org["auditor"], manager, org["owner"]]}  # fmt: skip


def _pages(department) -> list[str]:
    return [
        reverse("billing"),
        reverse("billing-statements"),
        reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": _month_label()}),
        reverse("billing-prices"),
    ]


@pytest.mark.django_db
def test_every_billing_page_renders_for_admin_auditor_manager_and_owner(client, world, department):
    for user in world["readers"]:
        client.force_login(user)
        for url in _pages(department):
            response = client.get(url)
            assert response.status_code == 200, (user.username, url)


@pytest.mark.django_db
def test_a_member_without_billing_view_is_refused_every_page(client, world, department):
    client.force_login(world["viewer"])
    for url in _pages(department):
        assert client.get(url).status_code == 403, url


@pytest.mark.django_db
def test_an_owner_of_another_department_cannot_see_this_departments_statement(client, world, department):
    client.force_login(world["outsider"])
    url = reverse(
        "billing-statement", kwargs={"cost_center": department.cost_center, "month": _month_label()}
    )
    assert client.get(url).status_code == 404
    assert department.name.encode() not in client.get(reverse("billing-statements")).content


@pytest.mark.django_db
def test_the_navigation_links_billing_for_readers(client, world):
    client.force_login(world["owner"])
    assert f'href="{reverse("billing")}"'.encode() in client.get(reverse("dashboard")).content


@pytest.mark.django_db
def test_the_draft_statement_groups_lines_by_team_with_subtotals(client, world, department, team):
    client.force_login(world["manager"])
    url = reverse(
        "billing-statement", kwargs={"cost_center": department.cost_center, "month": _month_label()}
    )
    page = client.get(url).content.decode()
    assert "Support AI" in page and "Search" in page and "draft" in page
    assert "dep-support-ai" in page and "dep-search" in page


@pytest.mark.django_db
def test_an_owner_sees_only_their_own_teams_lines_and_is_told_so(client, world, department):
    client.force_login(world["owner"])
    url = reverse(
        "billing-statement", kwargs={"cost_center": department.cost_center, "month": _month_label()}
    )
    page = client.get(url).content.decode()
    assert "dep-support-ai" in page
    assert "dep-search" not in page and "Search" not in page
    assert "your own teams&#x27; lines only" in page or "your own teams' lines only" in page
    overview = client.get(reverse("billing")).content.decode()
    assert "dep-search" not in overview and "By department" not in overview


@pytest.mark.django_db
def test_the_overview_shows_spend_forecast_and_the_budget_bar(client, world):
    client.force_login(world["admin"])
    page = client.get(reverse("billing")).content.decode()
    assert "Forecast to month end" in page and "run rate" in page
    assert "Support AI" in page and "100.00" in page
    assert 'class="chart chart--bars"' in page


def test_the_forecast_divides_spend_by_the_part_of_the_month_gone_by():
    month = money.month_start(timezone.now())
    start, end = money.month_bounds(month)
    halfway = start + (end - start) / 2
    assert forecast(Decimal("10.00"), month, halfway) == Decimal("20.00")
    assert forecast(Decimal("10.00"), month, start + timedelta(minutes=59)) is None  # too early to tell
    assert forecast(Decimal("10.00"), month, end) == Decimal("10.00")


@pytest.mark.django_db
def test_the_daily_series_adds_up_to_the_compute_on_the_statement(world, department):
    now = timezone.now()
    month = money.month_start(now)
    days = daily.series(month, now, [department.pk])
    amounts, _tokens = days.total(days.cells())
    draft = billing_statements.month_of(department, month, now)
    assert sum(amounts) == draft.total
    assert days.compute_total(days.cells()) == amounts  # all of it compute: the world makes no calls


@pytest.mark.django_db
def test_the_overview_shows_an_earlier_month_and_refuses_a_month_not_begun(client, world, department):
    client.force_login(world["admin"])
    now = timezone.now()
    earlier = money.month_start(money.month_start(now) - timedelta(days=1))
    page = client.get(reverse("billing"), {"month": earlier.strftime("%Y-%m")})
    assert page.status_code == 200 and "Spent in the month" in page.content.decode()
    assert client.get(reverse("billing"), {"month": "2999-01"}).status_code == 404  # not begun
    assert client.get(reverse("billing"), {"month": "last"}).status_code == 404


@pytest.mark.django_db
def test_a_deployments_month_cost_is_its_replica_hours_at_the_pools_price(world):
    interval = ComputeInterval.objects.get(key="replica:1")
    hours = Fraction((interval.ended_at - interval.started_at) // timedelta(microseconds=1), 3_600_000_000)
    created = interval.started_at - timedelta(minutes=1)
    cost = costs.deployment_this_month("dep-support-ai", team_id=interval.team_id, created_at=created)
    assert cost.intervals == 1
    assert cost.cost == money.cents(2 * hours) and cost.hours == money.to_decimal(hours, Decimal("0.01"))


@pytest.mark.django_db
def test_a_deployment_named_as_one_deleted_before_it_does_not_show_that_ones_cost(world, team, other_team):
    """Another team ran dep-support-ai earlier this month and deleted it: the name's intervals are not the
    new deployment's (nor are its own team's from before it was created)."""
    interval = ComputeInterval.objects.get(key="replica:1")
    assert (
        costs.deployment_this_month(
            "dep-support-ai", team_id=other_team.pk, created_at=interval.started_at - timedelta(minutes=1)
        ).intervals
        == 0
    )
    assert (
        costs.deployment_this_month(
            "dep-support-ai", team_id=team.pk, created_at=interval.started_at + timedelta(seconds=1)
        ).intervals
        == 0
    )


@pytest.mark.django_db
def test_a_jobs_compute_cost_is_found_by_its_key_prefix(world, team, department):
    now = timezone.now()
    meters.record_interval(
        key="job:finetune:41:1", kind=ComputeKind.JOB, team_id=team.pk, department_id=department.pk,
        subject="fine-tune #41", pool_id=7, pool="pool-a", gpus=2, cpu_cores=0, memory_bytes=0,
        started_at=now - timedelta(minutes=30), ended_at=now,
    )  # fmt: skip
    assert costs.job_compute(41).cost == Decimal("2.00")
    assert costs.job_compute(4).cost == Decimal("0.00")


# --- Price book ---------------------------------------------------------------------------------------
def _price_form(**overrides) -> dict:
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return {
        "kind": "store",
        "subject": "store:local",
        "gib_month": "0.5",
        "effective_from": hour.strftime("%Y-%m-%dT%H:%M"),
        "note": "first",
    } | overrides


@pytest.fixture
def local_store(settings):
    settings.ARTIFACT_STORE = "local"


@pytest.mark.django_db
def test_an_admin_sets_a_new_price_version_audited(client, world, local_store):
    client.force_login(world["admin"])
    response = client.post(reverse("billing-price-set"), _price_form())
    assert response.status_code == 302
    price = Price.objects.get(kind="store")
    assert price.gib_month == Decimal("0.5") and price.note == "first"
    assert AuditEvent.objects.filter(action="price.set").count() == 2  # the world's pool price and this
    assert "local" in client.get(reverse("billing-prices")).content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["owner", "auditor", "manager", "viewer", "outsider"])
def test_the_price_form_refuses_everyone_but_admins(client, world, local_store, role):
    client.force_login(world[role])
    assert client.post(reverse("billing-price-set"), _price_form()).status_code == 403
    assert not Price.objects.filter(kind="store").exists()
    assert b"Set a price" not in client.get(reverse("billing-prices")).content


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad",
    [
        {"gib_month": "-1"},
        {"gib_month": "abc"},
        {"gib_month": "1" * 30},
        {"gib_month": "", "gpu_hour": "3"},  # a rate the kind has not
        {"subject": "pool:7"},  # a subject of another kind
        {"subject": "store:nope"},
        {"effective_from": "2026-13-01T00:00"},
        {"note": "x" * 201},
    ],
)
def test_the_price_form_refuses_bad_input_next_to_the_field(client, world, local_store, bad):
    client.force_login(world["admin"])
    response = client.post(reverse("billing-price-set"), _price_form(**bad))
    assert response.status_code == 400
    assert not Price.objects.filter(kind="store").exists()


@pytest.mark.django_db
def test_the_price_form_shows_the_services_refusal_of_a_time_not_on_the_hour(client, world, local_store):
    client.force_login(world["admin"])
    hour = timezone.now().replace(second=0, microsecond=0) + timedelta(hours=1)
    response = client.post(
        reverse("billing-price-set"),
        _price_form(effective_from=hour.replace(minute=30).strftime("%Y-%m-%dT%H:%M")),
    )
    assert response.status_code == 400 and b"on the hour" in response.content


# --- Closed statements and re-issue -------------------------------------------------------------------
def _closed(world, department) -> Statement:
    last = billing_statements.previous_month(money.month_start(timezone.now()))
    return billing_statements.close(actor_for(world["admin"]), department, last)


@pytest.mark.django_db
def test_a_closed_statement_shows_its_hash_and_an_admin_reissues_it(client, world, department):
    statement = _closed(world, department)
    url = reverse(
        "billing-statement", kwargs={"cost_center": department.cost_center, "month": statement.month}
    )
    client.force_login(world["admin"])
    page = client.get(url).content.decode()
    assert statement.sha256 in page and "Re-issue statement" in page
    response = client.post(url + "reissue/", {"reason": "a price was fixed after the close"})
    assert response.status_code == 302
    assert Statement.objects.get(pk=statement.pk).status == StatementStatus.SUPERSEDED
    page = client.get(url).content.decode()
    assert "a price was fixed after the close" in page
    assert client.get(url + "?revision=1").status_code == 200


@pytest.mark.django_db
def test_a_reissue_needs_a_reason(client, world, department):
    statement = _closed(world, department)
    client.force_login(world["admin"])
    url = reverse(
        "billing-statement-reissue", kwargs={"cost_center": department.cost_center, "month": statement.month}
    )
    assert client.post(url, {"reason": "short"}).status_code == 400
    assert Statement.objects.get(pk=statement.pk).status == StatementStatus.CLOSED


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["auditor", "manager", "owner"])
def test_readers_who_are_not_admins_cannot_reissue(client, world, department, role):
    statement = _closed(world, department)
    client.force_login(world[role])
    url = reverse(
        "billing-statement-reissue", kwargs={"cost_center": department.cost_center, "month": statement.month}
    )
    assert b"Re-issue statement" not in client.get(url.removesuffix("reissue/")).content
    assert client.post(url, {"reason": "because I can, surely"}).status_code == 403


@pytest.mark.django_db
def test_a_bad_month_in_the_address_is_not_found(client, world, department):
    client.force_login(world["admin"])
    url = reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": "2026-13"})
    assert client.get(url).status_code == 404
    url = reverse("billing-statement", kwargs={"cost_center": "CC-NOPE", "month": _month_label()})
    assert client.get(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("month", ["9999-12", "0001-01", "1999-12", "3000-01"])
def test_a_month_outside_the_years_of_statements_is_not_found(client, world, department, month):
    client.force_login(world["admin"])
    client.raise_request_exception = False  # 9999-12 and 0001-01 once overflowed into a 500
    url = reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": month})
    assert client.get(url).status_code == 404
    assert client.post(url + "reissue/", {"reason": "a price was fixed after the close"}).status_code == 404


@pytest.mark.django_db
def test_a_month_not_begun_has_no_statement_page_as_the_api_refuses_it(client, world, department):
    _closed(world, department)  # last month closed: a "draft" of next month would carry its adjustments
    client.force_login(world["admin"])
    this_month = money.month_start(timezone.now())
    url = reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": this_month})
    assert client.get(url).status_code == 200
    following = money.next_month(this_month)
    url = reverse("billing-statement", kwargs={"cost_center": department.cost_center, "month": following})
    assert client.get(url).status_code == 404
    assert client.post(url + "reissue/", {"reason": "a price was fixed after the close"}).status_code == 404


@pytest.mark.django_db
def test_a_revision_that_is_a_digit_but_not_a_number_is_ignored(client, world, department):
    statement = _closed(world, department)
    client.force_login(world["admin"])
    client.raise_request_exception = False
    url = reverse(
        "billing-statement", kwargs={"cost_center": department.cost_center, "month": statement.month}
    )
    assert client.get(url, {"revision": "²"}).status_code == 200  # "²".isdigit(), but int("²") fails


# --- Query counts -----------------------------------------------------------------------------------
def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


@pytest.mark.django_db
def test_the_statement_list_reads_a_page_of_statements_in_a_pinned_number_of_queries(
    client, world, department, other_department, monkeypatch
):
    """Past page 1 (which adds this month's drafts, one computation per department) a page of closed
    statements costs the same queries however many there are."""
    monkeypatch.setattr("portfolio.billing.views.statements.PER_PAGE", 2)
    client.force_login(world["admin"])
    month = money.month_start(timezone.now())
    admin = actor_for(world["admin"])
    for _ in range(3):
        month = billing_statements.previous_month(month)
        billing_statements.close(admin, department, month)
        billing_statements.close(admin, other_department, month)
    url = reverse("billing-statements") + "?page=2"
    assert _queries(client, url) == 5
    client.force_login(world["owner"])  # a team owner's totals are their teams' lines: still one query
    assert _queries(client, url) == 7


@pytest.mark.django_db
def test_the_price_book_reads_every_version_in_a_pinned_number_of_queries(client, world, local_store):
    client.force_login(world["admin"])
    url = reverse("billing-prices")
    before = _queries(client, url)
    admin = actor_for(world["admin"])
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for hours in (1, 2, 3):
        services.set_price(
            actor=admin, subject=Subject(PriceKind.STORE, "local", "local"),
            effective_from=hour + timedelta(hours=hours), gib_month=str(hours),
        )  # fmt: skip
        services.set_price(
            actor=admin, subject=POOL, effective_from=hour + timedelta(hours=hours), gpu_hour="3"
        )
    assert _queries(client, url) == before == 6


def test_quantities_and_unit_prices_read_without_trailing_zeros():
    from portfolio.billing.views.statements import plain

    assert [plain(Decimal(v)) for v in ("0.250000000", "1.000000", "0E-9", "10")] == ["0.25", "1", "0", "10"]
