"""Serving through its service functions, on real PostgreSQL: what a team's deployment and endpoint may
use, whoever acts (members of two teams and platform admins included)."""

from __future__ import annotations

import pytest

from portfolio.errors import Invalid
from portfolio.registry.choices import Visibility
from serving import services
from serving.choices import PoolKind
from serving.models import Deployment
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.serving.conftest import SMOLLM2_SHAPE, audited, deploy, make_adapter, share_with_everyone
from tests.serving.nodes import add_node

pytestmark = pytest.mark.django_db


# --- Isolation: what a team's deployment and endpoint may use, whoever acts ------------------------
@pytest.fixture
def their_version(org, other_team, artifact):
    """A ready base version of the other team's own (team-visible) model."""
    return ready_base(
        actor_for(org["outsider"]),
        other_team,
        "contracts-base",
        artifact,
        parameter_count=134_515_008,
        shape=SMOLLM2_SHAPE,
    )


@pytest.fixture
def their_endpoint(org, other_team, their_version, pool, node):
    outsider = actor_for(org["outsider"])
    deploy(outsider, other_team, their_version, pool, name="contracts-bot")
    return services.create_endpoint(
        actor=outsider, name="contracts", team=other_team, routes=[{"deployment": "contracts-bot"}]
    )


def test_an_engineer_who_only_views_another_team_cannot_make_its_endpoint_a_fallback(
    make_user, team, other_team, deployment, their_endpoint
):
    # The repro: an engineer of team A, a viewer of team B, sets B's endpoint as the fallback of A's.
    from portfolio.accounts.models import Membership

    user = make_user("a-engineer-b-viewer")
    Membership.objects.create(user=user, team=team, role="engineer")
    Membership.objects.create(user=user, team=other_team, role="viewer")
    actor = actor_for(user)
    routes = [{"deployment": deployment.name}]
    with pytest.raises(
        Invalid, match=r"fallback: contracts belongs to another team; .* of its own team \(Support AI\)"
    ):
        services.create_endpoint(
            actor=actor, name="support", team=team, routes=routes, fallback=their_endpoint
        )
    endpoint = services.create_endpoint(actor=actor, name="support", team=team, routes=routes)
    with pytest.raises(Invalid, match="fallback: contracts belongs to another team") as refused:
        services.set_routes(actor=actor, endpoint=endpoint, routes=routes, fallback=their_endpoint)
    assert refused.value.fields == {"fallback": ["Choose an endpoint of Support AI."]}
    endpoint.refresh_from_db()
    assert endpoint.fallback is None
    assert audited("endpoint.routes", endpoint) is None


def test_not_even_a_platform_admin_makes_another_teams_endpoint_a_fallback(
    admin, team, deployment, their_endpoint
):
    routes = [{"deployment": deployment.name}]
    with pytest.raises(Invalid, match="belongs to another team"):
        services.create_endpoint(
            actor=admin, name="support", team=team, routes=routes, fallback=their_endpoint
        )
    endpoint = services.create_endpoint(actor=admin, name="support", team=team, routes=routes)
    with pytest.raises(Invalid, match="belongs to another team"):
        services.set_routes(actor=admin, endpoint=endpoint, routes=routes, fallback=their_endpoint)


def test_an_endpoint_of_the_same_team_is_a_fallback(owner, team, deployment):
    routes = [{"deployment": deployment.name}]
    backup = services.create_endpoint(actor=owner, name="support-backup", team=team, routes=routes)
    endpoint = services.create_endpoint(
        actor=owner, name="support", team=team, routes=routes, fallback=backup
    )
    assert endpoint.fallback == backup
    assert services.set_routes(actor=owner, endpoint=endpoint, routes=routes, fallback=None).fallback is None


def test_a_member_of_two_teams_cannot_put_one_teams_deployment_on_a_pool_only_the_other_may_use(
    admin, member_of_both, team, other_team, base_version, their_version
):
    theirs_only = services.create_pool(
        actor=admin, name="contracts-pool", kind=PoolKind.CPU, teams=[other_team]
    )
    add_node(theirs_only, "contracts-01")
    with pytest.raises(Invalid, match=r"pool: contracts-pool is not open to Support AI") as refused:
        deploy(member_of_both, team, base_version, theirs_only)
    assert refused.value.fields == {"pool": ["Not open to Support AI."]}
    with pytest.raises(Invalid, match="not open to Support AI"):
        deploy(admin, team, base_version, theirs_only)  # the team decides, not who acts
    assert not Deployment.objects.exists()
    assert deploy(member_of_both, other_team, their_version, theirs_only).pool == theirs_only


def test_a_member_of_two_teams_cannot_serve_the_other_teams_private_model_as_this_teams(
    admin, member_of_both, team, their_version, pool, node
):
    with pytest.raises(Invalid, match=r"version: contracts-base:v1 is not shared with Support AI") as refused:
        deploy(member_of_both, team, their_version, pool)
    assert refused.value.fields == {"version": ["Not shared with Support AI."]}
    with pytest.raises(Invalid, match="not shared with Support AI"):
        deploy(admin, team, their_version, pool)
    assert not Deployment.objects.exists()
    assert deploy(member_of_both, team, share_with_everyone(their_version), pool).version == their_version


def test_a_model_shared_with_the_department_is_served_by_its_teams_only(
    admin, department, team, base_version, pool, node, artifact, org
):
    from portfolio.accounts.models import Team

    sibling = Team.objects.create(department=department, name="Support Tools", slug="support-tools")
    base_version.model.visibility = Visibility.DEPARTMENT
    base_version.model.save(update_fields=["visibility"])
    assert deploy(admin, sibling, base_version, pool, name="tools-bot").owner_team == sibling
    from portfolio.accounts.models import Department

    elsewhere = Team.objects.create(
        department=Department.objects.create(name="Finance", cost_center="CC-900"),
        name="Finance AI",
        slug="finance-ai",
    )
    with pytest.raises(Invalid, match="not shared with Finance AI"):
        deploy(admin, elsewhere, base_version, pool, name="finance-bot")


def test_a_restart_onto_another_teams_private_version_is_refused(
    member_of_both, team, deployment, their_version
):
    with pytest.raises(Invalid, match="version: contracts-base:v1 is not shared with Support AI"):
        services.restart(actor=member_of_both, deployment=deployment, version=their_version)
    deployment.refresh_from_db()
    assert (deployment.version.label, deployment.generation) == ("smollm2-135m:v1", 1)


def test_an_adapter_of_another_teams_private_model_is_not_added_to_this_teams_deployment(
    org, member_of_both, team, other_team, artifact, base_version, deployment
):
    theirs = make_adapter(
        org, other_team, artifact, base_version, model_name="contracts-tone", creator="outsider"
    )
    with pytest.raises(Invalid, match="adapter: contracts-tone:v1 is not shared with Support AI"):
        services.add_adapter(actor=member_of_both, deployment=deployment, adapter=theirs)
    assert not deployment.adapters.exists()


def test_another_teams_adapter_made_private_since_is_loaded_onto_no_new_replica(
    org, admin, owner, other_team, artifact, base_version, deployment
):
    """Adapters were checked only when added: a scale-up or a restart loaded another team's adapter, made
    private since, onto every new engine (the base version was checked, its adapters not)."""
    theirs = share_with_everyone(
        make_adapter(org, other_team, artifact, base_version, model_name="contracts-tone", creator="outsider")
    )
    services.add_adapter(actor=owner, deployment=deployment, adapter=theirs)
    theirs.model.visibility = Visibility.TEAM
    theirs.model.save(update_fields=["visibility"])
    deployment.refresh_from_db()
    generation, replicas = deployment.generation, deployment.replicas
    for start_more in (
        lambda: services.scale(actor=admin, deployment=deployment, replicas=replicas + 1),
        lambda: services.restart(actor=owner, deployment=deployment),
    ):
        with pytest.raises(Invalid, match="adapter: contracts-tone:v1 is not shared with Support AI"):
            start_more()
    deployment.refresh_from_db()
    assert (deployment.generation, deployment.replicas) == (generation, replicas)
    assert services.scale(actor=admin, deployment=deployment, replicas=0).replicas == 0


def test_scaling_up_on_a_pool_closed_to_the_team_since_is_refused_but_scaling_down_is_not(
    admin, owner, other_team, deployment, pool
):
    services.update_pool(
        actor=admin,
        pool=pool,
        description="",
        teams=[other_team],
    )
    with pytest.raises(Invalid, match="pool: cpu-pool is not open to Support AI"):
        services.scale(actor=admin, deployment=deployment, replicas=2)
    assert services.scale(actor=admin, deployment=deployment, replicas=0).replicas == 0


def test_a_rolling_restart_starts_no_new_replicas_on_a_pool_closed_to_the_team_or_past_a_hard_limit(
    admin, owner, other_team, team, deployment, pool
):
    """A restart (or an update to larger engine arguments) starts new replicas: the checks of a scale-up
    apply to it, and a refused one changes nothing."""
    from portfolio.billing import budgets
    from portfolio.errors import Conflict

    generation = deployment.generation
    budgets.set_budget(actor=admin, team=team, amount="0", hard_limit=True)
    with pytest.raises(Conflict, match="hard limit"):
        services.restart(actor=owner, deployment=deployment, args={"max_model_len": 1024})
    budgets.set_budget(actor=admin, team=team, amount="100", hard_limit=False)
    services.update_pool(actor=admin, pool=pool, description="", teams=[other_team])
    with pytest.raises(Invalid, match="pool: cpu-pool is not open to Support AI"):
        services.restart(actor=owner, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.generation == generation and deployment.engine_args == {}
    assert (
        audited("deployment.update", deployment) is None and audited("deployment.restart", deployment) is None
    )
    assert services.scale(actor=admin, deployment=deployment, replicas=0).replicas == 0
    assert services.restart(actor=owner, deployment=deployment).generation == generation + 1  # stopped: free
