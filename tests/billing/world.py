"""A billing world: two departments, a priced endpoint of one called by a team of the other, a replica,
stored bytes, a closed statement, and one user per billing role."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import OrgRole, TeamRole
from portfolio.accounts.models import DepartmentRole, Membership, Team
from portfolio.billing import meters, money, subjects
from portfolio.billing.choices import BudgetScope, ComputeKind, PriceKind
from portfolio.billing.models import Budget, Statement
from portfolio.billing.services import set_price
from portfolio.billing.statements import close, previous_month
from serving import services as serving_services
from tests.conftest import actor_for

# Every role the billing routes tell apart; "anonymous" calls without signing in.
ROLES = [
    "admin",
    "auditor",
    "manager",  # of the department billed
    "other_manager",  # of the other department
    "owner",  # of one team of the department billed (reads only its lines)
    "engineer",
    "developer",
    "nobody",  # signed in, in no team
    "anonymous",
]


@dataclass
class World:
    users: dict
    department: object
    other_department: object
    team: Team
    voice: Team
    other_team: Team
    pool: object
    past: date  # last month: a draft with usage
    closed_month: date  # the month before: closed
    statement: Statement


@pytest.fixture
def world(make_user, department, other_department, team, other_team) -> World:
    voice = Team.objects.create(department=department, name="Voice", slug="voice")
    users = {
        "admin": make_user("admin", superuser=True),
        "auditor": make_user("auditor", org_role=OrgRole.AUDITOR),
        "manager": make_user("manager"),
        "other_manager": make_user("other_manager"),
        "owner": make_user("owner"),
        "engineer": make_user("engineer"),
        "developer": make_user("developer"),
        "nobody": make_user("nobody"),
    }
    DepartmentRole.objects.create(user=users["manager"], department=department)
    DepartmentRole.objects.create(user=users["other_manager"], department=other_department)
    for role in ("owner", "engineer", "developer"):
        Membership.objects.create(user=users[role], team=team, role=role)
    Membership.objects.create(user=make_user("contracts-owner"), team=other_team, role=TeamRole.OWNER)

    admin = actor_for(users["admin"])
    pool = serving_services.create_pool(actor=admin, name="local-cpu", kind="cpu")
    past = previous_month(money.month_start(timezone.now()))
    start, end = money.month_bounds(past)
    store = settings.ARTIFACT_STORE
    set_price(
        actor=admin,
        subject=subjects.Subject(PriceKind.ENDPOINT, "501", "contracts-ep"),
        effective_from=start,
        input_per_million=Decimal("2"),
        output_per_million=Decimal("6"),
    )
    set_price(actor=admin, subject=subjects.find(PriceKind.POOL, "local-cpu"), effective_from=start,
              cpu_core_hour=Decimal("0.5"))  # fmt: skip
    set_price(actor=admin, subject=subjects.find(PriceKind.STORE, store), effective_from=start,
              gib_month=Decimal("3"))  # fmt: skip
    # Support AI (CC-100) calls Contracts' (CC-200) endpoint: 1M in x 2 + 0.5M out x 6 = 5.00.
    meters.replace_token_hours(start, end, [
        meters.TokenHour(start + timedelta(hours=1), 501, "contracts-ep", other_team.pk, other_department.pk,
                         "contracts-dep", team.pk, department.pk, 10, 1_000_000, 500_000),
    ])  # fmt: skip
    # Voice runs a replica of 2 cores for 10 hours on the second day: 2 x 10 x 0.5 = 10.00.
    meters.record_interval(
        key="replica:1", kind=ComputeKind.REPLICA, team_id=voice.pk, department_id=department.pk,
        subject="voice-dep", pool_id=pool.pk, pool=pool.name, gpus=0, cpu_cores=2, memory_bytes=0,
        started_at=start + timedelta(days=1), ended_at=start + timedelta(days=1, hours=10),
    )  # fmt: skip
    # Support AI keeps (days in the month) GiB for one day: 1 GiB-month x 3 = 3.00, on the third day.
    meters.record_storage_day(
        past + timedelta(days=2), [(team.pk, department.pk, store, 2**30 * money.days_in(past))]
    )
    closed_month = previous_month(past)
    statement = close(Actor.for_system("tests"), department, closed_month)
    # Budgets of the team and of its department, set by an admin (the budgets' routes change them).
    Budget.objects.create(scope=BudgetScope.TEAM, team=team, amount=Decimal("500"), ceiling=Decimal("800"))
    Budget.objects.create(scope=BudgetScope.DEPARTMENT, department=department, amount=Decimal("5000"))
    return World(
        users, department, other_department, team, voice, other_team, pool, past, closed_month, statement
    )


@pytest.fixture
def call(client):
    """``call(role, method, url, body=None)``: the response to ``role`` (signed in unless anonymous)."""

    def make(world: World, role: str, method: str, url: str, body=None):
        client.logout()
        if role != "anonymous":
            client.force_login(world.users[role])
        send = getattr(client, method.lower())
        if body is None:
            return send(url)
        return send(url, body, content_type="application/json")

    return make


def label(month: date) -> str:
    return month.strftime("%Y-%m")
