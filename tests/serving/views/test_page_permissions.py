"""Every serving page against the capability matrix, for each role."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.urls import reverse

from tests.conftest import actor_for
from tests.serving.route_rules import UI_ROUTES, build_world, ui_kwargs
from tests.test_route_permissions import ROLES, _call, expected, outcome

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", sorted(UI_ROUTES))
def test_every_serving_page_answers_each_role_as_the_matrix_says(client, org, team, base_version, name):
    world = {"team_id": team.pk, "version_id": base_version.pk}
    world |= build_world(actor=actor_for(org["engineer"]), team=team, version=base_version)
    rule = UI_ROUTES[name]
    url = reverse(name, kwargs=ui_kwargs(name, world))
    mismatches = []
    for role in ROLES:
        with transaction.atomic():
            client.logout()
            got = outcome(_call(client, role, org, rule, url, world), api_call=False)
            if got != expected(rule, role):
                mismatches.append(f"{role}: expected {expected(rule, role)}, got {got}")
            transaction.set_rollback(True)
    assert not mismatches, f"{name} ({rule.method}): " + "; ".join(mismatches)


def test_the_rules_cover_every_serving_page():
    from serving.urls import urlpatterns

    assert {pattern.name for pattern in urlpatterns} == set(UI_ROUTES)
