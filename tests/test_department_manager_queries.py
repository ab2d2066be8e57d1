"""A department manager's permission checks read each object's team's department: the pages that check
rows one by one load those teams with the rows, so the portfolio and the jobs API cost a department
manager as many queries for three times the rows."""

from __future__ import annotations

import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portfolio.accounts.models import DepartmentRole, Membership
from serving.models import Deployment, Endpoint, EndpointRoute
from tests.training.conftest import base as base  # noqa: F401 - the training fixtures
from tests.training.conftest import cpu_pool as cpu_pool  # noqa: F401
from tests.training.conftest import engineer as engineer  # noqa: F401
from tests.training.conftest import isolated_store as isolated_store  # noqa: F401
from tests.training.conftest import labels_set as labels_set  # noqa: F401
from tests.training.test_portfolio import finished
from tests.training.test_portfolio import world as world  # noqa: F401 - the shared fixture
from training.choices import JobStatus
from training.evals import catalogue, portfolio
from training.models import FineTuneJob

pytestmark = pytest.mark.django_db

numbers = itertools.count(1)


@pytest.fixture
def manager(make_user, team):
    """A viewer of ``team`` who also manages its department."""
    user = make_user("manager")
    DepartmentRole.objects.create(user=user, department=team.department)
    Membership.objects.create(user=user, team=team, role="viewer")
    return user


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured)


def add_tasks(world, engineer, count: int) -> None:
    """Tasks each served by an endpoint of their own, with the hint at ``tuned`` (its canary button is
    checked against the production endpoint)."""
    big = Deployment.objects.get(name="big-dep")
    version = world["eval_set"].dataset_version
    for _ in range(count):
        n = next(numbers)
        endpoint = Endpoint.objects.create(name=f"served-{n}", owner_team=big.owner_team)
        EndpointRoute.objects.create(endpoint=endpoint, deployment=big, weight=100)
        task = catalogue.create_task(
            actor=engineer, owner_team=big.owner_team, name=f"Task {n}", kind="classification"
        )
        eval_set = catalogue.add_eval_set(actor=engineer, task=task, dataset_version=version, source="all")
        portfolio.set_production_endpoint(actor=engineer, task=task, endpoint=endpoint)
        finished(eval_set, endpoint, quality=0.44, cost=0.05, p50=410.0)
        finished(eval_set, world["tuned"], quality=0.94, cost=0.02, p50=120.0)


def test_the_portfolio_costs_a_department_manager_as_many_queries_for_three_times_the_rows(
    client, world, engineer, manager
):
    client.force_login(manager)
    add_tasks(world, engineer, 1)
    few = queries(client, reverse("portfolio"))
    assert client.get(reverse("portfolio")).content.decode().count('data-testid="portfolio-hint"') == 2

    add_tasks(world, engineer, 4)

    assert queries(client, reverse("portfolio")) == few


def test_the_jobs_api_costs_a_department_manager_as_many_queries_for_three_times_the_errored_jobs(
    client, world, base, cpu_pool, manager
):
    def errored(count: int) -> None:
        for _ in range(count):
            FineTuneJob.objects.create(
                owner_team=world["task"].owner_team,
                base_version=base,
                dataset_version=world["eval_set"].dataset_version,
                target_model=base.model,
                pool=cpu_pool,
                status=JobStatus.ERRORED,
                status_detail="Traceback (most recent call last): ...",
            )

    client.force_login(manager)
    errored(2)
    few = queries(client, "/api/v1/training/jobs")

    errored(4)

    assert queries(client, "/api/v1/training/jobs") == few
    assert client.get("/api/v1/training/jobs").json()["count"] == 6
