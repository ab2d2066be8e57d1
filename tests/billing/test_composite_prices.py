"""A router, cascade or vote endpoint takes no price of its own: each hop is metered and charged at the price of
the plain endpoint it calls, so no usage row names the composite. Its price was accepted, audited and shown in
force on the price book, and never charged to anyone."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.billing import services, subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.errors import Invalid
from serving.choices import EndpointKind
from serving.models import Endpoint
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("kind", [EndpointKind.ROUTER, EndpointKind.CASCADE, EndpointKind.VOTE])
def test_a_composite_endpoints_own_price_is_refused_naming_what_to_price(org, team, kind):
    Endpoint.objects.create(name="ticket-router", owner_team=team, kind=kind)
    subject = subjects.find(PriceKind.ENDPOINT, "ticket-router")
    with pytest.raises(Invalid, match=rf"^subject: ticket-router is a {kind} endpoint: .*Price those"):
        services.set_price(actor=actor_for(org["admin"]), subject=subject, input_per_million="5")
    assert not Price.objects.exists() and not AuditEvent.objects.filter(action="price.set").exists()


def test_the_api_refuses_it_in_its_error_shape_and_a_plain_endpoint_is_priced_as_before(client, org, team):
    Endpoint.objects.create(name="ticket-router", owner_team=team, kind=EndpointKind.CASCADE)
    Endpoint.objects.create(name="small", owner_team=team)
    client.force_login(org["admin"])

    def price(name):
        body = {"kind": "endpoint", "subject": name, "input_per_million": "5", "output_per_million": "15"}
        return client.post("/api/v1/billing/prices", body, content_type="application/json")

    refused = price("ticket-router")
    assert refused.status_code == 400, refused.content
    assert "is a cascade endpoint" in refused.json()["error"]["message"]
    assert price("small").status_code == 201
    assert list(Price.objects.values_list("subject_name", flat=True)) == ["small"]


def test_the_price_form_offers_plain_endpoints_only(client, org, team, django_assert_max_num_queries):
    """It listed every endpoint, composites among them, whose price was then refused on submit."""
    from portfolio.billing.views.prices import PriceForm

    for name, kind in (("small", EndpointKind.PLAIN), ("large", EndpointKind.PLAIN)):
        Endpoint.objects.create(name=name, owner_team=team, kind=kind)
    for kind in (EndpointKind.ROUTER, EndpointKind.CASCADE, EndpointKind.VOTE):
        Endpoint.objects.create(name=f"ticket-{kind}", owner_team=team, kind=kind)
    with django_assert_max_num_queries(3):  # one a kind of subject, not one an endpoint
        choices = dict(PriceForm().fields["subject"].choices)
    offered = [name for _, name in choices[PriceKind.ENDPOINT.label]]
    assert sorted(offered) == ["large", "small"]
    client.force_login(org["admin"])
    page = client.get(reverse("billing-prices")).content.decode()
    assert "ticket-cascade" not in page and ">small<" in page


def test_a_composite_posted_from_a_stale_form_is_refused_in_the_refusals_words(client, org, team):
    """A form loaded while the endpoint was plain, posted once it is a cascade: the subject is no longer offered,
    and the page said only Django's "Select a valid choice", not why. An unknown subject still says that."""
    from datetime import timedelta

    from django.utils import timezone

    endpoint = Endpoint.objects.create(name="ticket-router", owner_team=team, kind=EndpointKind.CASCADE)
    client.force_login(org["admin"])
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)

    def post(subject):
        form = {"kind": "endpoint", "subject": subject, "input_per_million": "5"}
        return client.post(reverse("billing-price-set"), form | {"effective_from": f"{hour:%Y-%m-%dT%H:%M}"})

    refused = post(f"endpoint:{endpoint.pk}")
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "ticket-router is a cascade endpoint" in page and "Select a valid choice" not in page
    unknown = post("endpoint:00000000-0000-0000-0000-000000000000").content.decode()
    assert "Select a valid choice" in unknown and "is a cascade endpoint" not in unknown
    assert not Price.objects.exists()
