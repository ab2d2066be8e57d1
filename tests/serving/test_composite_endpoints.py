"""Composite endpoints (router, cascade, vote) through their service functions: a config is validated,
bounded and audited, names plain endpoints of its own team only (no cycles), and the endpoints it calls
cannot be deleted or made composite from under it."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict, Forbidden, Invalid
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Model, ModelVersion
from serving import services
from serving.models import Deployment, Endpoint
from tests.conftest import actor_for
from tests.serving.call_locks import each_waits_for_the_teams_call_lock
from tests.serving.conftest import audited

pytestmark = pytest.mark.django_db


@pytest.fixture
def plain(owner, team, deployment):
    """Three plain endpoints of the team, all on the one deployment."""

    def make(name: str, max_n: int = 8) -> Endpoint:
        return services.create_endpoint(
            actor=owner, name=name, team=team, routes=[{"deployment": deployment.name}], max_n=max_n
        )

    return {name: make(name) for name in ("small", "large", "labeller")} | {"make": make}


ROUTER = {"classifier": "labeller", "routes": {"Billing": "small", "tech": "large"}, "default": "large"}


def create(owner, team, kind: str, config: dict, name: str = "smart") -> Endpoint:
    return services.create_endpoint(actor=owner, name=name, team=team, routes=[], kind=kind, config=config)


def test_a_router_is_created_with_its_normalised_table_and_audited(owner, team, plain):
    router = create(owner, team, "router", {**ROUTER, "system": "Answer with one word."})
    assert router.kind == "router" and not router.routes.exists()
    assert router.config == {
        "classifier": "labeller",
        "routes": {"billing": "small", "tech": "large"},
        "default": "large",
        "max_tokens": 4,
        "system": "Answer with one word.",
    }
    event = audited("endpoint.create", router)
    assert event.after["kind"] == "router" and event.after["config"]["routes"]["billing"] == "small"


def test_a_cascade_keeps_its_threshold_in_range(owner, team, plain):
    cascade = create(owner, team, "cascade", {"small": "small", "large": "large", "threshold": -0.7})
    assert cascade.config == {"small": "small", "large": "large", "threshold": -0.7}
    for threshold in (0.5, -21, "high", True, float("nan")):
        with pytest.raises(Invalid, match="config.threshold"):
            create(owner, team, "cascade", {"small": "small", "large": "large", "threshold": threshold}, "c2")
    with pytest.raises(Invalid, match="config.large: another endpoint than small"):
        create(owner, team, "cascade", {"small": "small", "large": "small", "threshold": -1}, "c3")


def test_a_vote_is_capped_by_its_own_ceiling_and_by_the_sampled_endpoints_max_n(owner, team, plain):
    plain["make"]("narrow", max_n=3)
    vote = create(owner, team, "vote", {"endpoint": "small", "n": 5})
    assert vote.config == {"endpoint": "small", "n": 5, "method": "majority", "temperature": 0.8}
    with pytest.raises(Invalid, match="config.n: narrow allows at most 3"):
        create(owner, team, "vote", {"endpoint": "narrow", "n": 5}, "v2")
    for n in (17, 10**400):  # one too large for a float was a 500 (math.isfinite overflowed)
        with pytest.raises(Invalid, match="config.n: from 2 to 16"):
            create(owner, team, "vote", {"endpoint": "small", "n": n}, "v3")
    with pytest.raises(Invalid, match="config.method"):
        create(owner, team, "vote", {"endpoint": "small", "n": 3, "method": "loudest"}, "v4")


def test_a_samplers_cap_may_not_fall_below_the_n_its_votes_ask_for(owner, team, plain, deployment):
    create(owner, team, "vote", {"endpoint": "small", "n": 5})
    routes = [{"deployment": deployment.name}]
    with pytest.raises(Invalid, match=r"max_n: smart \(n=5\) asks small for more completions"):
        services.set_routes(actor=owner, endpoint=plain["small"], routes=routes, max_n=4)
    assert Endpoint.objects.get(name="small").max_n == 8, "nothing changed"
    assert services.set_routes(actor=owner, endpoint=plain["small"], routes=routes, max_n=5).max_n == 5
    assert services.set_routes(actor=owner, endpoint=plain["large"], routes=routes, max_n=1).max_n == 1


def test_a_composite_may_not_call_a_composite(owner, team, plain):
    create(owner, team, "cascade", {"small": "small", "large": "large", "threshold": -1}, "cascade")
    with pytest.raises(
        Invalid, match="cascade is a cascade endpoint; a composite calls plain endpoints only"
    ):
        create(owner, team, "router", {**ROUTER, "default": "cascade"})
    with pytest.raises(Invalid, match="cannot call itself"):
        create(owner, team, "vote", {"endpoint": "loop", "n": 2}, "loop")


def test_a_composite_calls_its_own_teams_endpoints_only(org, owner, team, other_team, plain):
    outsider = actor_for(org["outsider"])
    with pytest.raises(Invalid, match="no endpoint 'small' of team Contracts"):
        services.create_endpoint(
            actor=outsider,
            name="theirs",
            team=other_team,
            routes=[],
            kind="vote",
            config={"endpoint": "small", "n": 2},
        )


def test_a_router_table_is_bounded_and_its_labels_readable(owner, team, plain):
    too_many = {f"label{i}": "small" for i in range(33)}
    with pytest.raises(Invalid, match="1 to 32 labels"):
        create(owner, team, "router", {**ROUTER, "routes": too_many})
    with pytest.raises(Invalid, match="label 'two words'"):
        create(owner, team, "router", {**ROUTER, "routes": {"two words": "small"}})
    with pytest.raises(Invalid, match="config.max_tokens"):
        create(owner, team, "router", {**ROUTER, "max_tokens": 500})
    with pytest.raises(Invalid, match="config.temperature: not a setting of a router"):
        create(owner, team, "router", {**ROUTER, "temperature": 1})


def test_a_composite_has_no_routes_and_its_routes_cannot_be_set(owner, team, deployment, plain):
    with pytest.raises(Invalid, match="it has no routes or fallback"):
        services.create_endpoint(
            actor=owner,
            name="smart",
            team=team,
            routes=[{"deployment": deployment.name}],
            kind="vote",
            config={"endpoint": "small", "n": 2},
        )
    vote = create(owner, team, "vote", {"endpoint": "small", "n": 2})
    with pytest.raises(Invalid, match="smart is a vote endpoint: change its config"):
        services.set_routes(actor=owner, endpoint=vote, routes=[{"deployment": deployment.name}])


def test_an_endpoint_a_composite_calls_cannot_be_deleted_or_made_composite(owner, team, plain):
    create(owner, team, "router", ROUTER)
    with pytest.raises(Conflict, match="small is called by smart"):
        services.delete_endpoint(actor=owner, endpoint=plain["small"])
    with pytest.raises(Conflict, match="labeller is called by smart"):
        services.configure_endpoint(
            actor=owner, endpoint=plain["labeller"], kind="vote", config={"endpoint": "large", "n": 2}
        )
    with pytest.raises(Invalid, match="fallback: smart is a router endpoint"):
        services.set_routes(
            actor=owner,
            endpoint=plain["large"],
            routes=plain["large"].route_list(),
            fallback=Endpoint.objects.get(name="smart"),
        )


def test_configuring_an_endpoint_is_audited_with_the_config_before_and_after(owner, team, plain):
    spare = plain["make"]("spare")
    services.configure_endpoint(
        actor=owner,
        endpoint=spare,
        kind="cascade",
        config={"small": "small", "large": "large", "threshold": -1},
    )
    event = audited("endpoint.configure", spare)
    assert event.before["kind"] == "plain" and event.before["config"] == {}
    assert event.after["kind"] == "cascade" and event.after["config"]["threshold"] == -1.0
    services.configure_endpoint(actor=owner, endpoint=spare, kind="plain")
    spare.refresh_from_db()
    assert (spare.kind, spare.config) == ("plain", {}), "back to its weighted routes, which it kept"


def test_only_who_manages_the_team_configures_its_endpoints(org, team, plain):
    with pytest.raises(Forbidden, match="does not allow deployment.manage"):
        services.configure_endpoint(
            actor=actor_for(org["developer"]),
            endpoint=plain["small"],
            kind="vote",
            config={"endpoint": "large", "n": 2},
        )


def test_a_composite_has_no_routes_to_roll_out_on(owner, team, deployment, plain):
    vote = create(owner, team, "vote", {"endpoint": "small", "n": 2})
    with pytest.raises(Invalid, match="smart is a vote endpoint, with no routes to roll out on"):
        services.start_rollout(actor=owner, endpoint=vote, deployment=deployment.name)


def test_a_cascade_may_take_a_verifiers_yes_or_no_as_its_confidence(owner, team, plain):
    plain["make"]("checker")
    config = {"small": "small", "large": "large", "confidence": "verifier", "verifier": "checker"}
    cascade = create(owner, team, "cascade", {**config, "verifier_prompt": "Is it one queue name?"})
    assert cascade.config == {**config, "verifier_prompt": "Is it one queue name?"}
    with pytest.raises(Invalid, match="config.threshold: a log-probability threshold; a verifier"):
        create(owner, team, "cascade", {**config, "threshold": -1}, "c2")
    with pytest.raises(Invalid, match="config.verifier: another endpoint than small and large"):
        create(owner, team, "cascade", {**config, "verifier": "large"}, "c3")
    with pytest.raises(Invalid, match="config.verifier: only with confidence verifier"):
        create(
            owner,
            team,
            "cascade",
            {"small": "small", "large": "large", "threshold": -1, "verifier": "checker"},
            "c4",
        )
    with pytest.raises(Invalid, match="config.confidence: logprob"):
        create(owner, team, "cascade", {**config, "confidence": "vibes"}, "c5")
    with pytest.raises(Invalid, match="config.verifier_prompt: text of at most 4000"):
        create(owner, team, "cascade", {**config, "verifier_prompt": "x" * 4001}, "c6")
    with pytest.raises(Invalid, match="config.verifier: the name of an endpoint"):
        create(owner, team, "cascade", {**config, "verifier": None}, "c7")


def test_a_vote_may_pick_best_of_n_by_a_verifier(owner, team, plain):
    plain["make"]("checker")
    vote = create(
        owner, team, "vote", {"endpoint": "small", "n": 4, "method": "verifier", "verifier": "checker"}
    )
    assert vote.config == {
        "endpoint": "small",
        "n": 4,
        "method": "verifier",
        "temperature": 0.8,
        "verifier": "checker",
    }
    with pytest.raises(Invalid, match="config.verifier: the name of an endpoint"):
        create(owner, team, "vote", {"endpoint": "small", "n": 4, "method": "verifier"}, "v2")
    with pytest.raises(Invalid, match="config.verifier: only with method verifier"):
        create(owner, team, "vote", {"endpoint": "small", "n": 4, "verifier": "checker"}, "v3")


def test_a_verifier_is_a_plain_endpoint_of_the_team_and_cannot_be_deleted_from_under_it(owner, team, plain):
    checker = plain["make"]("checker")
    config = {"small": "small", "large": "large", "confidence": "verifier", "verifier": "checker"}
    create(owner, team, "cascade", config)
    with pytest.raises(Conflict, match="checker is called by smart"):
        services.delete_endpoint(actor=owner, endpoint=checker)
    with pytest.raises(Conflict, match="checker is called by smart"):
        services.configure_endpoint(
            actor=owner, endpoint=checker, kind="vote", config={"endpoint": "large", "n": 2}
        )
    with pytest.raises(Invalid, match="config.verifier: smart is a cascade endpoint"):
        create(
            owner, team, "vote", {"endpoint": "small", "n": 2, "method": "verifier", "verifier": "smart"}, "v"
        )
    with pytest.raises(Invalid, match="config.verifier: no endpoint 'elsewhere' of team"):
        create(owner, team, "cascade", {**config, "verifier": "elsewhere"}, "c2")


def test_a_cascade_may_ask_a_large_base_model_with_a_bounded_plain_prompt(owner, team, plain):
    config = {"small": "small", "large": "large", "threshold": -1}
    few_shot = "Ticket: charged twice\nQueue: billing\n\nTicket: {input}\nQueue:"
    cascade = create(owner, team, "cascade", {**config, "large_template": few_shot, "large_stop": ["\n"]})
    assert cascade.config == {**config, "threshold": -1.0, "large_template": few_shot, "large_stop": ["\n"]}
    with pytest.raises(Invalid, match="config.large_template: needs {input}, once"):
        create(owner, team, "cascade", {**config, "large_template": "no placeholder"}, "c2")
    with pytest.raises(Invalid, match="config.large_template: needs {input}, once"):
        create(owner, team, "cascade", {**config, "large_template": "{input} {input}"}, "c2")
    with pytest.raises(Invalid, match="config.large_template: text of at most 8000"):
        create(owner, team, "cascade", {**config, "large_template": "{input}" + "x" * 8000}, "c3")
    with pytest.raises(Invalid, match="config.large_stop: a list of at most 4"):
        create(owner, team, "cascade", {**config, "large_template": few_shot, "large_stop": ["a"] * 5}, "c4")
    with pytest.raises(Invalid, match="config.large_stop: only with large_template"):
        create(owner, team, "cascade", {**config, "large_stop": ["\n"]}, "c5")


@pytest.mark.django_db(transaction=True)
def test_changes_to_who_calls_whom_in_a_team_wait_for_each_other(owner, team, plain):
    """A router made to call X while X is made a vote (or deleted) at the same moment: each check passed
    against the other's uncommitted change. Such changes now hold the team's lock: one made while another
    holds it waits (here: past a short lock timeout, refused), changing nothing."""
    each_waits_for_the_teams_call_lock(
        team.pk,
        lambda: services.configure_endpoint(
            actor=owner, endpoint=plain["labeller"], kind="vote", config={"endpoint": "large", "n": 2}
        ),
        lambda: create(owner, team, "router", ROUTER),
        lambda: services.delete_endpoint(actor=owner, endpoint=plain["small"]),
    )
    assert Endpoint.objects.filter(kind="plain").count() == 3 and not Endpoint.objects.exclude(kind="plain")


@pytest.mark.parametrize(
    "task, served", [("embedding", "embeddings"), ("rerank", "reranking"), ("speech", "speech to text")]
)
def test_an_endpoint_a_composite_calls_keeps_generating_text(
    owner, team, plain, base_version, pool, task, served
):
    """A composite asks its hops for chat completions: neither can it name an endpoint of embeddings,
    reranking or speech, nor can an endpoint it names be routed to one afterwards."""
    model = Model.objects.create(name=f"{task}-model", owner_team=team, task=task)
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.BASE,
        source=Source.LOCAL,
        status=VersionStatus.READY,
        artifact=base_version.artifact,
    )
    other = Deployment.objects.create(name=f"{task}-dep", owner_team=team, version=version, pool=pool)
    router = create(owner, team, "router", ROUTER)
    before = plain["small"].route_list()
    with pytest.raises(
        Invalid, match=f"smart calls small for text generation, and this route serves {served}"
    ):
        services.set_routes(actor=owner, endpoint=plain["small"], routes=[{"deployment": other.name}])
    assert plain["small"].route_list() == before
    # One no composite calls may route there; a composite may not then name it.
    free = plain["make"]("free")
    services.set_routes(actor=owner, endpoint=free, routes=[{"deployment": other.name}])
    with pytest.raises(Invalid, match=f"free serves {served}; a composite needs text generation"):
        services.configure_endpoint(
            actor=owner, endpoint=router, kind="router", config=ROUTER | {"default": "free"}
        )
