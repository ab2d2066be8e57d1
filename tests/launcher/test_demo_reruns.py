"""`make run` seeds and deploys the demo on every start: what an admin changed since (the demo department's
cost centre, the demo deployment scaled to zero) must not make the next start fail or wait for nothing."""

from io import StringIO

import pytest
from django.core.management import call_command

from portfolio.accounts.models import Department, Team
from portfolio.audit.models import AuditEvent
from portfolio.registry.demo_model import MODEL_NAME
from serving import services
from serving.management.commands.deploy_demo import DEMO_DEPLOYMENT
from serving.models import Deployment
from tests.serving.conftest import admin, artifact, base_version, node, pool  # noqa: F401

pytestmark = pytest.mark.django_db


def test_the_demo_department_is_found_through_the_demo_team_whatever_its_cost_centre():
    call_command("seed_demo", stdout=StringIO())
    Department.objects.filter(cost_center="CC-DEMO").update(cost_center="CC-4711")
    call_command("seed_demo", stdout=StringIO())  # once refused: "Demo Department" already exists
    assert Department.objects.get().cost_center == "CC-4711"
    assert Team.objects.get(slug="demo").department.cost_center == "CC-4711"


@pytest.fixture
def demo(team, base_version, pool, node, settings):  # noqa: F811
    """What `make run` has before deploy_demo: the demo team, the imported model and this machine's pool."""
    team.slug = "demo"
    team.save(update_fields=["slug"])
    base_version.model.name = MODEL_NAME
    base_version.model.save(update_fields=["name"])
    settings.NODE_POOL = pool.name
    return pool


def test_a_demo_deployment_scaled_to_zero_gets_one_replica_again_audited(demo, admin):  # noqa: F811
    call_command("deploy_demo", stdout=StringIO())
    services.scale(actor=admin, deployment=Deployment.objects.get(name=DEMO_DEPLOYMENT), replicas=0)
    out = StringIO()
    call_command("deploy_demo", stdout=out)
    deployment = Deployment.objects.get(name=DEMO_DEPLOYMENT)
    assert deployment.replicas == 1
    assert "had no replica: scaled to one" in out.getvalue()
    scaled = AuditEvent.objects.filter(action="deployment.scale").get()
    assert scaled.actor_label == "system:demo"


def test_a_demo_deployment_with_replicas_is_left_as_it_is(demo, admin):  # noqa: F811
    call_command("deploy_demo", stdout=StringIO())
    services.scale(actor=admin, deployment=Deployment.objects.get(name=DEMO_DEPLOYMENT), replicas=2)
    call_command("deploy_demo", stdout=StringIO())
    assert Deployment.objects.get(name=DEMO_DEPLOYMENT).replicas == 2
