"""A restart onto another version is refused where it would leave a composite without text: a vote, router or
cascade asks its hops for chat completions, so a deployment routed by an endpoint one of them calls may not
be restarted onto a reranking, speech or embedding model (set_routes already refused that route). And the
gateway refuses a composite whose hop serves anything but text, however its table came to say so."""

from __future__ import annotations

import pytest

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from portfolio.registry import services as registry
from portfolio.registry.choices import Task
from portfolio.registry.models import ModelVersion
from serving import services
from serving.gateway.composite import hops
from serving.gateway.errors import GatewayError
from serving.gateway.routing import Composite, EndpointInfo, Route, Snapshot
from serving.models import Deployment
from tests.conftest import actor_for
from tests.gateway.key_records import key_record
from tests.serving.call_locks import each_waits_for_the_teams_call_lock
from tests.serving.test_rollouts import world as world  # noqa: F401  (the fixture)
from tests.serving.views.conftest import make_version


@pytest.mark.django_db
def test_a_restart_onto_a_reranker_under_an_endpoint_a_vote_calls_is_refused_changing_nothing(
    org, world, team
):
    eng, admin = actor_for(org["engineer"]), actor_for(org["admin"])
    services.create_endpoint(actor=eng, name="helper", team=team, routes=[{"deployment": "support-next"}])
    services.create_endpoint(
        actor=eng, name="voter", team=team, routes=[], kind="vote", config={"endpoint": "helper", "n": 3}
    )
    text = ModelVersion.objects.get(model__name="smollm2", number=2)
    ranker = registry.create_model(actor=eng, name="ranker", owner_team=team, task=Task.RERANK)
    reranking = make_version(ranker, text.artifact, number=1)
    deployment = Deployment.objects.get(name="support-next")
    audited = AuditEvent.objects.count()

    with pytest.raises(
        Invalid, match="voter calls helper for text generation, and this route serves reranking"
    ):
        services.restart(actor=admin, deployment=deployment, version=reranking)

    deployment.refresh_from_db()
    assert (deployment.version_id, deployment.generation) == (text.pk, 1)
    assert AuditEvent.objects.count() == audited


@pytest.mark.django_db
def test_a_restart_onto_a_reranker_nothing_calls_for_text_goes_ahead(org, world, team):
    eng, admin = actor_for(org["engineer"]), actor_for(org["admin"])
    services.create_endpoint(actor=eng, name="helper", team=team, routes=[{"deployment": "support-next"}])
    ranker = registry.create_model(actor=eng, name="ranker", owner_team=team, task=Task.RERANK)
    reranking = make_version(ranker, ModelVersion.objects.get(number=2).artifact, number=1)

    restarted = services.restart(
        actor=admin, deployment=Deployment.objects.get(name="support-next"), version=reranking
    )

    assert restarted.version_id == reranking.pk


@pytest.mark.django_db(transaction=True)
def test_a_restart_onto_another_version_waits_for_a_change_to_who_calls_whom_in_the_team(org, world, team):
    """Checked under the team's lock, as set_routes and configure_endpoint check: a vote made to call the
    endpoint meanwhile, uncommitted, would pass a check that cannot see it."""
    each_waits_for_the_teams_call_lock(
        team.pk,
        lambda: services.restart(
            actor=actor_for(org["admin"]),
            deployment=Deployment.objects.get(name="support-next"),
            version=ModelVersion.objects.get(model__name="smollm2", number=1),
        ),
    )
    assert Deployment.objects.get(name="support-next").generation == 1


def plain(name: str, serves: str) -> EndpointInfo:
    return EndpointInfo(
        name=name,
        team_id=1,
        routes=(Route(1, name, name, "", 1),),
        fallback=None,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=512,
        serves=serves,
    )


@pytest.mark.parametrize("serves", ["score", "speech", "embedding"])
def test_the_gateway_refuses_a_composite_whose_hop_does_not_serve_text(serves):
    voter = EndpointInfo(
        name="voter",
        team_id=1,
        routes=(),
        fallback=None,
        input_micros_per_token=0.0,
        output_micros_per_token=0.0,
        max_model_len=512,
        max_n=1,
        composite=Composite("vote", sampler="helper", n=3),
    )
    snapshot = Snapshot(endpoints={"voter": voter, "helper": plain("helper", serves)})

    with pytest.raises(
        GatewayError, match="`voter` calls `helper`, which is not a plain text endpoint"
    ) as refused:
        hops(snapshot, key_record(), voter, "chat")

    assert refused.value.code == "composite_misconfigured"
    snapshot.endpoints["helper"] = plain("helper", "text")
    assert list(hops(snapshot, key_record(), voter, "chat")) == ["helper"]
