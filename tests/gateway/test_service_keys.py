"""A job's service key (an eval run's, a distillation's, a rollout judge's) is the job's: nobody edits it (its
addresses set to one its worker does not use failed the job, its calls billed), and only an owner or an admin
revokes it by hand, as a kill switch; a developer, who may not start such jobs, sees neither action. An IPv6
address with a zone (fe80::1%eth0) is refused as an address: it names a local interface, and a long zone
overflowed the stored column into a 500."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portfolio.accounts.actor import Actor
from serving.gateway import services
from serving.gateway.models import ApiKey
from tests.gateway.test_keys_api import _no_gateway_processes as _no_gateway_processes  # noqa: PLC0414
from tests.gateway.test_keys_api import api as api  # noqa: PLC0414 - the fixture, used by name

pytestmark = pytest.mark.django_db


@pytest.fixture
def service_key(team) -> ApiKey:
    key, _ = services.create_key(
        actor=Actor.for_system("training.evals"), team=team, name="eval run #7", service=True
    )
    return key


def test_a_developer_neither_edits_nor_revokes_a_jobs_key(api, org, service_key):
    path = f"/keys/{service_key.pk}"
    assert api(org["developer"], "patch", path, {"allowed_ips": ["203.0.113.9"]}).status_code == 409
    assert api(org["developer"], "delete", path).status_code == 403
    service_key.refresh_from_db()
    assert service_key.allowed_ips == [] and service_key.revoked_at is None


def test_an_owner_revokes_a_jobs_key_but_does_not_edit_it(api, org, service_key):
    path = f"/keys/{service_key.pk}"
    assert api(org["owner"], "patch", path, {"allowed_ips": ["203.0.113.9"]}).status_code == 409
    assert api(org["owner"], "delete", path).status_code == 200
    service_key.refresh_from_db()
    assert service_key.revoked_at is not None


def test_the_key_list_offers_a_developer_no_action_on_a_jobs_key(client, org, service_key):
    client.force_login(org["developer"])
    page = client.get(reverse("apikey-list")).content.decode()
    assert "eval run #7" in page
    assert reverse("apikey-edit", args=[service_key.pk]) not in page
    assert reverse("apikey-revoke", args=[service_key.pk]) not in page


@pytest.mark.parametrize("zoned", ["fe80::1%eth0", "fe80::1%" + "a" * 41])
def test_an_address_with_a_zone_is_refused_as_an_address(api, org, team, zoned):
    response = api(org["owner"], "post", f"/teams/{team.pk}/keys", {"name": "k", "allowed_ips": [zoned]})
    assert response.status_code == 400, response.content
    assert "allowed_ips" in response.json()["error"]["message"]
    assert not ApiKey.objects.filter(name="k").exists()
