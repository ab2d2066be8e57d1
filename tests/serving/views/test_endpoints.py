"""Endpoints: the route editor with its weights and fallback, the new-endpoint form, and who sees what."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from serving import services
from serving.cascade_savings import cascade_savings
from serving.models import Endpoint
from tests.serving.views.conftest import audited

pytestmark = pytest.mark.django_db


def routes_data(*rows: tuple[str, str, int], initial: int = 0, **extra) -> dict:
    data = {"routes-TOTAL_FORMS": str(len(rows)), "routes-INITIAL_FORMS": str(initial)}
    for index, (deployment, adapter, weight) in enumerate(rows):
        data |= {
            f"routes-{index}-deployment": deployment,
            f"routes-{index}-adapter": adapter,
            f"routes-{index}-weight": str(weight),
        }
    return data | extra


def test_the_endpoint_editor_saves_weights(signed_in, org, owner, deployment, endpoint, adapter_version):
    services.add_adapter(actor=owner, deployment=deployment, adapter=adapter_version, name="tone")
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 90), ("support-bot", "tone", 10), ("", "", 100), initial=1),
    )
    assert response.status_code == 302
    routes = {
        (r.adapter.name if r.adapter else None): r.weight for r in endpoint.routes.select_related("adapter")
    }
    assert routes == {None: 90, "tone": 10}
    event = audited("endpoint.routes", endpoint)
    assert event is not None
    assert event.before["routes"] == [{"deployment": "support-bot", "adapter": None, "weight": 100}]

    page = client.get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "90.0%" in page and "10.0%" in page
    assert '"model": "support"' in page


def test_a_removed_row_is_dropped_and_an_empty_editor_is_refused(signed_in, org, endpoint):
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), initial=1, **{"routes-0-DELETE": "on"}),
    )
    assert response.status_code == 200
    assert "Add at least one route" in response.content.decode()
    assert endpoint.routes.count() == 1


def test_a_fallback_loop_is_refused_on_the_form(signed_in, org, owner, team, endpoint):
    other = services.create_endpoint(
        actor=owner, name="support-b", team=team, routes=[{"deployment": "support-bot"}], fallback=endpoint
    )
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), fallback=other.pk),
    )
    assert response.status_code == 200
    assert "that would make a fallback loop" in response.content.decode()


def test_an_engineer_creates_an_endpoint_with_the_form(signed_in, org, team, deployment):
    response = signed_in(org["engineer"]).post(
        reverse("endpoint-create"),
        {"name": "support", "team": team.pk, "description": "Ticket answers"}
        | routes_data(("support-bot", "", 100)),
    )
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(name="support")
    assert endpoint.routes.get().deployment == deployment
    assert audited("endpoint.create", endpoint) is not None


def test_a_viewer_sees_the_routes_but_not_the_editor(signed_in, org, endpoint):
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert "100.0%" in page
    assert "Edit routes" not in page
    assert (
        signed_in(org["viewer"]).post(reverse("endpoint-routes", args=[endpoint.name]), {}).status_code == 403
    )


def test_an_outsider_sees_no_endpoint_of_another_team(signed_in, org, endpoint):
    client = signed_in(org["outsider"])
    assert b"support-bot" not in client.get(reverse("endpoint-list")).content
    assert client.get(reverse("endpoint-detail", args=[endpoint.name])).status_code == 404


@pytest.fixture
def their_endpoint(org, other_team, artifact, pool, node):
    """An endpoint of the other team, on a deployment of its own private model."""
    from portfolio.registry import services as registry
    from tests.conftest import actor_for
    from tests.serving.views.conftest import make_version

    outsider = actor_for(org["outsider"])
    model = registry.create_model(actor=outsider, name="contracts-base", owner_team=other_team)
    services.create_deployment(
        actor=outsider,
        name="contracts-bot",
        team=other_team,
        version=make_version(model, artifact),
        pool=pool,
        replicas=0,
    )
    return services.create_endpoint(
        actor=outsider, name="contracts", team=other_team, routes=[{"deployment": "contracts-bot"}]
    )


@pytest.fixture
def engineer_viewing_theirs(org, other_team):
    """The issue's user: an engineer of the endpoint's team, and a viewer of the other team."""
    from portfolio.accounts.models import Membership

    Membership.objects.create(user=org["engineer"], team=other_team, role="viewer")
    return org["engineer"]


def test_the_route_editor_offers_only_the_teams_own_endpoints_as_fallback(
    signed_in, engineer_viewing_theirs, owner, team, endpoint, their_endpoint
):
    services.create_endpoint(
        actor=owner, name="support-backup", team=team, routes=[{"deployment": "support-bot"}]
    )
    client = signed_in(engineer_viewing_theirs)
    page = client.get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert f'<option value="{Endpoint.objects.get(name="support-backup").pk}">support-backup</option>' in page
    assert f'value="{their_endpoint.pk}"' not in page

    response = client.post(
        reverse("endpoint-routes", args=[endpoint.name]),
        routes_data(("support-bot", "", 100), fallback=their_endpoint.pk),
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.fallback is None


def test_the_new_endpoint_form_refuses_another_teams_fallback(
    signed_in, engineer_viewing_theirs, team, deployment, their_endpoint
):
    response = signed_in(engineer_viewing_theirs).post(
        reverse("endpoint-create"),
        {"name": "support", "team": team.pk, "fallback": their_endpoint.pk}
        | routes_data(("support-bot", "", 100)),
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Endpoint.objects.filter(name="support").exists()


def test_the_route_editor_changes_the_completions_cap_and_refuses_one_out_of_range(signed_in, org, endpoint):
    client = signed_in(org["engineer"])
    page = client.get(reverse("endpoint-detail", args=[endpoint.name])).content.decode()
    assert 'name="max_n"' in page and 'value="8"' in page
    url = reverse("endpoint-routes", args=[endpoint.name])
    assert client.post(url, routes_data(("support-bot", "", 100), max_n="3")).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.max_n == 3
    response = client.post(url, routes_data(("support-bot", "", 100), max_n="500"))
    assert response.status_code == 200 and "less than or equal to 128" in response.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.max_n == 3


def _hop(cascade: str, request: str, hop: int, endpoint: str, tokens: tuple[int, int], cost: str):
    from decimal import Decimal

    from django.utils import timezone

    from serving.gateway.models import UsageEvent

    UsageEvent.objects.create(
        event_id=f"{request}-{hop}",
        at=timezone.now(),
        endpoint=endpoint,
        via=cascade,
        kind="chat",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        status=200,
        cost=Decimal(cost),
    )


def _price_endpoint(name: str, per_million: Decimal) -> None:
    from datetime import UTC, datetime

    from portfolio.billing.choices import PriceKind
    from portfolio.billing.models import Price

    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(Endpoint.objects.get(name=name).pk),
        subject_name=name,
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        input_per_million=per_million,
        output_per_million=per_million,
    )


def test_a_cascades_page_shows_its_config_escalation_rate_and_cost_saved(
    signed_in, org, owner, team, endpoint
):
    from datetime import UTC, datetime
    from decimal import Decimal

    from portfolio.billing.choices import PriceKind
    from portfolio.billing.models import Price

    large = services.create_endpoint(
        actor=owner, name="large", team=team, routes=[{"deployment": "support-bot"}]
    )
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(large.pk),
        subject_name="large",
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        input_per_million=Decimal("10"),
        output_per_million=Decimal("10"),
    )
    services.create_endpoint(
        actor=owner,
        name="smart",
        team=team,
        routes=[],
        kind="cascade",
        config={"small": "support", "large": "large", "threshold": -0.5},
    )
    _price_endpoint("support", Decimal("1"))  # each hop priced: an unpriced one's cost is not known
    # Four requests: three kept small answers of 100,000 tokens (1 each), one escalated (2 there).
    for request in ("a", "b", "c"):
        _hop("smart", request, 1, "support", (90_000, 10_000), "0.1")
    _hop("smart", "d", 1, "support", (90_000, 10_000), "0.1")
    _hop("smart", "d", 2, "large", (90_000, 10_000), "1")
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=["smart"])).content.decode()
    assert "Cascade (escalate on low confidence)" in page and "under -0.5" in page
    assert 'data-testid="escalation-rate">25%' in page
    # Always large: 4 x 1 = 4; the cascade paid 4 x 0.1 + 1 = 1.4; saved 2.6.
    assert 'data-testid="cost-saved">2.6000' in page
    assert "Edit routes" not in page


def test_a_verified_cascades_page_names_its_verifier_and_counts_its_questions_in_the_cost(
    signed_in, org, owner, team, endpoint
):
    for name in ("large", "checker"):
        services.create_endpoint(actor=owner, name=name, team=team, routes=[{"deployment": "support-bot"}])
    config = {"small": "support", "large": "large", "confidence": "verifier", "verifier": "checker"}
    services.create_endpoint(
        actor=owner,
        name="smart",
        team=team,
        routes=[],
        kind="cascade",
        config={**config, "verifier_prompt": "Strict."},
    )
    for name in ("support", "checker", "large"):  # each hop priced: an unpriced one's cost is not known
        _price_endpoint(name, Decimal("1"))
    _hop("smart", "a", 1, "support", (10, 1), "0.1")
    _hop("smart", "a", 2, "checker", (10, 1), "0.05")
    _hop("smart", "b", 1, "support", (10, 1), "0.1")
    _hop("smart", "b", 2, "checker", (10, 1), "0.05")
    _hop("smart", "b", 3, "large", (10, 1), "1")
    page = signed_in(org["viewer"]).get(reverse("endpoint-detail", args=["smart"])).content.decode()
    assert "unless" in page and ">checker</a> says the first answer is right" in page and "Strict." in page
    assert 'data-testid="escalation-rate">50%' in page
    savings = cascade_savings(Endpoint.objects.get(name="smart"), timezone.now() - timedelta(hours=1))
    assert savings.cost == Decimal("1.3"), "both small answers, both questions, one escalation"


def test_an_engineer_makes_an_endpoint_a_vote_from_its_page_and_bad_settings_come_back(
    signed_in, org, owner, team, endpoint
):
    services.create_endpoint(actor=owner, name="spare", team=team, routes=[{"deployment": "support-bot"}])
    client = signed_in(org["engineer"])
    url = reverse("endpoint-config", args=["spare"])
    refused = client.post(url, {"kind": "vote", "config": '{"endpoint": "support", "n": 99}'})
    assert refused.status_code == 200 and "from 2 to 16" in refused.content.decode()
    response = client.post(url, {"kind": "vote", "config": '{"endpoint": "support", "n": 3}'})
    assert response.status_code == 302
    assert Endpoint.objects.get(name="spare").config["n"] == 3
    assert audited("endpoint.configure", Endpoint.objects.get(name="spare")) is not None


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("[" * 5_000, "nested too deeply"),
        ("[" + "1," * 15_000 + "1]", "At most 20,000 characters"),
        # Found by review: a number or a boolean was measured with len() after parsing (a 500).
        ("1", "an object"),
        ("true", "an object"),
        ("2.5", "an object"),
        # Found by review: a lone surrogate was refused by PostgreSQL at save (a router's system prompt), or
        # could not be encoded when the refused form came back (a vote's method): 500s.
        ('{"endpoint": "support", "n": 3, "method": "zz\\udc00"}', "lone UTF-16 surrogate"),
        (
            '{"classifier": "support", "routes": {"x": "support"}, "system": "\\ud800"}',
            "lone UTF-16 surrogate",
        ),
    ],
)
def test_a_config_too_deep_too_long_or_not_an_object_comes_back_on_the_form(
    signed_in, org, owner, team, endpoint, config, error
):
    services.create_endpoint(actor=owner, name="spare", team=team, routes=[{"deployment": "support-bot"}])
    client = signed_in(org["engineer"])
    client.raise_request_exception = False  # 5,000 "[" once overflowed json.loads into a 500
    response = client.post(reverse("endpoint-config", args=["spare"]), {"kind": "vote", "config": config})
    assert response.status_code == 200 and error in response.content.decode()
    assert Endpoint.objects.get(name="spare").kind != "vote"
