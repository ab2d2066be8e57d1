"""The permission matrix over every route of the UI and the REST API.

Every route must be declared in tests/route_rules.py (an app's pages in tests/<app>/route_rules.py) with the
decision it makes; a new route without a declaration fails ``test_every_route_has_a_permission_decision``.
Each declared route is then called by anonymous, an outsider (owner of another team), each team role and the
org-wide roles, and the answer is checked against what the capability matrix says: allowed, 403 (visible,
not allowed) or 404 (not visible).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from portfolio.accounts import personal_tokens
from portfolio.accounts.capabilities import role_allows
from portfolio.accounts.models import DepartmentRole, Membership, SsoMappingRule
from portfolio.api import api
from portfolio.registry import services as registry_services
from portfolio.registry.choices import Source
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from serving import services as serving_services
from serving.gateway import services as key_services
from serving.models import Node
from tests.conftest import actor_for
from tests.permissions import Rule
from tests.registry.conftest import make_model_folder
from tests.route_rules import API_ROUTES, UI_ROUTES
from tests.training import route_rules as training_rules
from training.models import DatasetVersion, FineTuneJob, MergeJob

User = get_user_model()
ROLES = ["anonymous", "outsider", "owner", "engineer", "developer", "viewer", "auditor", "admin"]


def _ui_route_names() -> set[str]:
    names: set[str] = set()

    def walk(patterns, namespace=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "api":
                    continue  # the REST API is enumerated operation by operation below
                walk(pattern.url_patterns, pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern):
                names.add(pattern.name or f"<unnamed {pattern.pattern}>")

    walk(get_resolver().url_patterns)
    return names


def _api_operations() -> set[str]:
    found = set()
    for prefix, router in api._routers:
        # A router nested in another (accounts' "/sso") is listed with its prefix joined without a slash.
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                for method in operation.methods:
                    found.add(f"{method} {prefix}{path}")
    return found


def test_every_route_has_a_permission_decision():
    assert _ui_route_names() - set(UI_ROUTES) == set(), "UI routes without a declared permission decision"
    assert _api_operations() - set(API_ROUTES) == set(), (
        "API operations without a declared permission decision"
    )


def test_no_declaration_is_stale():
    assert set(UI_ROUTES) - _ui_route_names() == set()
    assert set(API_ROUTES) - _api_operations() == set()


def expected(rule: Rule, role: str) -> str:
    if rule.scope == "public":
        return "ok"
    if role == "anonymous":
        return "login"
    if rule.scope in ("signed_in", "own"):
        return "ok"
    roles = {"admin"} if role == "admin" else {"auditor"} if role == "auditor" else set()
    if rule.scope == "billing":
        # Billing answers 404 to whoever reads none of it (portfolio.billing.access), members too: never 403.
        if role in ("owner", "engineer", "developer", "viewer"):
            roles = {role}
        return "ok" if role != "outsider" and role_allows(roles, rule.action) else "hidden"
    if rule.scope == "org":
        return "ok" if role_allows(roles, rule.action) else "forbidden"
    if rule.scope == "any_team" and role == "outsider":
        # An action held in any team of one's own: the outsider owns another team.
        return "ok" if role_allows({"owner"}, rule.action) else "forbidden"
    # team scope: the object belongs to the team that owner..viewer are members of
    if role == "outsider":
        return "hidden"
    if role in ("owner", "engineer", "developer", "viewer"):
        roles = {role}
    return "ok" if role_allows(roles, rule.action) else "forbidden"


def outcome(response, *, api_call: bool) -> str:
    status = response.status_code
    assert status < 500, f"server error {status}: {response.content[:500]!r}"
    # The UI sends anonymous callers to the login page with ?next=; logout's own redirect has none.
    if status == 401 or (not api_call and status == 302 and "/login/?next=" in response.get("Location", "")):
        return "login"
    return {403: "forbidden", 404: "hidden"}.get(status, "ok")


@pytest.fixture
def world(org, team, department, make_user, settings, tmp_path):
    """Objects for every route: a model with a stored version, memberships, a user to add."""
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.DATA_DIR = tmp_path / "data"
    default_store.cache_clear()
    newbie = make_user("newbie")
    DepartmentRole.objects.create(user=newbie, department=department)  # for the routes that take it back
    rule = SsoMappingRule.objects.create(kind="group", value="/support", team=team, team_role="viewer")
    model = registry_services.create_model(actor=actor_for(org["engineer"]), name="router", owner_team=team)
    folder = make_model_folder(Path(settings.IMPORT_ROOTS[0]) / "tiny")
    version = registry_services.start_import(
        actor=actor_for(org["engineer"]), model=model, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    import_version(version.pk)
    registry_services.promote(actor=actor_for(org["engineer"]), version=version, alias="staging")
    admin = actor_for(org["admin"])
    pool = serving_services.create_pool(actor=admin, name="local-cpu", kind="cpu")
    Node.objects.create(
        name="node-1",
        pool=pool,
        address="127.0.0.1",
        cpu_cores=2,
        memory_bytes=24 * 2**30,
        heartbeat_at=timezone.now(),
    )
    deployment = serving_services.create_deployment(
        actor=admin, name="smol", team=team, version=version, pool=pool, replicas=0
    )
    endpoint = serving_services.create_endpoint(
        actor=admin, name="smol-ep", team=team, routes=[{"deployment": "smol"}]
    )
    share = serving_services.share_endpoint(actor=admin, endpoint=endpoint, department=department)
    api_key, _ = key_services.create_key(actor=admin, team=team, name="team key")
    training_world = training_rules.build_world(actor=actor_for(org["engineer"]), team=team)
    dataset_version = DatasetVersion.objects.get(dataset_id=training_world["dataset_id"])
    job = FineTuneJob.objects.create(
        owner_team=team, base_version=version, dataset_version=dataset_version, target_model=model, pool=pool
    )
    merge = MergeJob.objects.create(adapter=version, owner_team=team)
    yield {
        "merge_id": merge.pk,
        "department_id": department.pk,
        "pk_department": department.pk,
        "month": timezone.now().strftime("%Y-%m"),  # billing: the department's draft of this month
        "team_id": team.pk,
        "slug": team.slug,
        "membership_id": Membership.objects.get(team=team, user=org["viewer"]).pk,
        "name": "router",
        "alias": "staging",
        "number": 1,
        "path": "config.json",
        "version_id": version.pk,
        "node": "node-1",
        "deployment": deployment.name,
        "endpoint": "smol-ep",
        "share": share.pk,
        "adapter": "none",
        "key_id": api_key.pk,
        "dataset_version_id": dataset_version.pk,
        "job_id": job.pk,
        **training_world,
        "user_id": User.objects.get(username="newbie").pk,
        "mapping_id": rule.pk,
    }
    default_store.cache_clear()


def _fill(template: str, values: dict) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value)).replace("{" + key + ":path}", str(value))
    return template


def _ui_url(name: str, values: dict, own_token_pk: int | None) -> str:
    from django.urls import reverse

    from tests.billing import route_rules as billing_rules
    from tests.gateway import route_rules as gateway_rules
    from tests.serving import route_rules as serving_rules

    for rules in (serving_rules, gateway_rules, training_rules, billing_rules):
        if name in rules.UI_KWARGS:
            return reverse(name, kwargs=rules.ui_kwargs(name, values))
    kwargs_by_name = {
        "department-detail": {"pk": values["pk_department"]},
        "department-edit": {"pk": values["pk_department"]},
        "department-manager-add": {"pk": values["pk_department"]},
        "department-manager-remove": {"pk": values["pk_department"], "user_id": values["user_id"]},
        "team-detail": {"slug": values["slug"]},
        "team-edit": {"slug": values["slug"]},
        "member-add": {"slug": values["slug"]},
        "member-role": {"slug": values["slug"], "pk": values["membership_id"]},
        "member-remove": {"slug": values["slug"], "pk": values["membership_id"]},
        "token-revoke": {"pk": own_token_pk},
        "sso-mapping-delete": {"pk": values["mapping_id"]},
        "billing-statement-export": {
            "department_id": values["department_id"],
            "month": values["month"],
            "fmt": "csv",
        },
        **{
            route: {"pk": values["user_id"]}
            for route in ("user-detail", "user-roles", "user-deactivate", "user-reactivate")
        },
        "apikey-policy": {"slug": values["slug"]},
        "alias-remove": {"name": values["name"], "alias": values["alias"]},
        **{
            route: {"name": values["name"]}
            for route in ("model-detail", "model-edit", "model-import", "adapter-upload", "model-compare")
        },
        **{
            route: {"name": values["name"], "number": values["number"]}
            for route in (
                "version-detail",
                "version-progress",
                "version-promote",
                "version-archive",
                "version-purge",
                "version-verify",
                "version-chat-template",
                "version-merge",
            )
        },
    }
    return reverse(name, kwargs=kwargs_by_name.get(name, {}))


def _call(client, role, org, rule: Rule, url: str, values: dict):
    if role != "anonymous":
        client.force_login(org[role])
    data = {k: _fill(v, values) if isinstance(v, str) else v for k, v in rule.data.items()}
    data = {k: int(v) if isinstance(v, str) and v.isdigit() and rule.json else v for k, v in data.items()}
    if data.get("file") == "<adapter.zip>":
        import io

        data["file"] = io.BytesIO(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
        data["file"].name = "adapter.zip"
    if data.get("file") == "<dataset.jsonl>":
        from tests.training.route_rules import dataset_upload

        data["file"] = dataset_upload()
    method = getattr(client, rule.method.lower())
    if rule.json and rule.method != "GET":
        return method(url, data, content_type="application/json")
    return method(url, data) if rule.method in ("GET", "POST") else method(url)


def _own_token(org, role) -> int | None:
    if role == "anonymous":
        return 999999
    token, _ = personal_tokens.create_personal_token(
        actor=actor_for(org[role]), name="mine", expires_in_days=5
    )
    return token.pk


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(UI_ROUTES))
def test_ui_route_answers_each_role_as_the_matrix_says(client, org, world, name):
    rule = UI_ROUTES[name]
    mismatches = []
    for role in ROLES:
        with transaction.atomic():
            url = _ui_url(name, world, _own_token(org, role) if rule.scope == "own" else None)
            client.logout()
            got = outcome(_call(client, role, org, rule, url, world), api_call=False)
            if got != expected(rule, role):
                mismatches.append(f"{role}: expected {expected(rule, role)}, got {got}")
            transaction.set_rollback(True)
    assert not mismatches, f"{name} ({rule.method}): " + "; ".join(mismatches)


@pytest.mark.django_db
@pytest.mark.parametrize("operation", sorted(API_ROUTES))
def test_api_operation_answers_each_role_as_the_matrix_says(client, org, world, operation):
    rule = API_ROUTES[operation]
    if rule.scope == "billing":
        pytest.skip("its matrix is tests/billing/test_permissions.py")
    mismatches = []
    for role in ROLES:
        with transaction.atomic():
            values = {**world, "token_id": _own_token(org, role) if rule.scope == "own" else 0}
            url = "/api/v1" + _fill(operation.split(" ", 1)[1], values)
            client.logout()
            got = outcome(_call(client, role, org, rule, url, values), api_call=True)
            if got != expected(rule, role):
                mismatches.append(f"{role}: expected {expected(rule, role)}, got {got}")
            transaction.set_rollback(True)
    assert not mismatches, f"{operation}: " + "; ".join(mismatches)


@pytest.mark.django_db
def test_a_member_of_team_a_never_receives_team_b_data(client, org, other_team):
    client.force_login(org["owner"])
    for url in (
        f"/teams/{other_team.slug}/",
        f"/api/v1/teams/{other_team.pk}",
        f"/api/v1/teams/{other_team.pk}/members",
    ):
        response = client.get(url)
        assert response.status_code == 404
        assert other_team.name.encode() not in response.content
