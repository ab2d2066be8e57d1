"""The permission matrix over every route of the UI and the REST API.

Every route must be declared below with the decision it makes; a new route without a declaration fails
``test_every_route_has_a_permission_decision``. Each declared route is then called by anonymous, an
outsider (owner of another team), each team role and the org-wide roles, and the answer is checked
against what the capability matrix says: allowed, 403 (visible, not allowed) or 404 (not visible).
"""

from __future__ import annotations

import contextlib
import importlib
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
from tests.permissions import Rule, rest, ui
from tests.registry.conftest import make_model_folder
from tests.training import route_rules as training_rules
from training.models import DatasetVersion, FineTuneJob, MergeJob

User = get_user_model()
ROLES = ["anonymous", "outsider", "owner", "engineer", "developer", "viewer", "auditor", "admin"]


UI_ROUTES: dict[str, Rule] = {
    "healthz": ui("public"),
    "api-docs": ui("public"),
    "login": ui("public"),
    # Single sign-on (off here): starting one or answering one is for anyone; the state decides (tests/sso).
    "sso-login": ui("public"),
    "sso-callback": ui("public"),
    # The realm's back-channel logout: for anyone, only a logout token signed by the realm acts (tests/sso).
    "sso-backchannel-logout": ui("public", method="POST"),
    "logout": ui("signed_in", method="POST"),
    "password-change": ui("signed_in"),
    "dashboard": ui("signed_in"),
    "roles": ui("signed_in"),
    "department-list": ui("signed_in"),
    "department-create": ui("org", "department.create", "POST", name="Finance", cost_center="CC-900"),
    "department-detail": ui("team", "department.view"),
    "department-edit": ui("team", "department.change", "POST", name="Ops", cost_center="CC-100"),
    # Department managers are granted and taken back by platform admins (the user is `newbie`).
    "department-manager-add": ui("team", "department.change", "POST", username="newbie"),
    "department-manager-remove": ui("team", "department.change", "POST"),
    "team-list": ui("signed_in"),
    "team-create": ui("org", "team.create"),
    "team-detail": ui("team", "team.view"),
    "team-edit": ui("team", "team.change", "POST", name="Support AI", description="x"),
    "member-add": ui("team", "member.manage", "POST", username="newbie", role="viewer"),
    "member-role": ui("team", "member.manage", "POST", role="engineer"),
    "member-remove": ui("team", "member.manage", "POST"),
    "user-list": ui("org", "user.view"),
    "user-create": ui("org", "user.manage"),
    "user-detail": ui("org", "user.view"),
    "user-roles": ui("org", "user.manage", "POST", roles="auditor"),
    "user-deactivate": ui("org", "user.manage", "POST"),
    "user-reactivate": ui("org", "user.manage", "POST"),
    # Single sign-on mapping rules: auditors read them, platform admins change them.
    "sso-mapping-list": ui("org", "user.view"),
    "sso-mapping-add": ui("org", "user.manage", "POST", kind="group", value="/auditors", org_role="auditor"),
    "sso-mapping-delete": ui("org", "user.manage", "POST"),
    "sso-sync": ui("org", "user.manage", "POST"),
    # A team's key policy: its members read it; owners (and admins) change it.
    "apikey-policy": ui("team", "apikey.limits", "POST", rpm_limit="100"),
    "token-list": ui("signed_in"),
    "token-create": ui("signed_in", method="POST", name="ci", expires_in_days="30"),
    "token-revoke": ui("own", method="POST"),
    "audit-log": ui("org", "audit.view"),
    # Exports are POSTs (with the CSRF token): each writes an audit row in the caller's name.
    "audit-export": ui("org", "audit.export", "POST"),
    "billing-statement-export": ui("billing", "billing.view", "POST"),
    "model-list": ui("signed_in"),
    "model-create": ui(
        "team",
        "model.register",
        "POST",
        name="new-model",
        owner_team="{team_id}",
        task="chat",
        visibility="team",
    ),
    "model-detail": ui("team", "model.view"),
    "model-edit": ui("team", "model.register", "POST", task="chat", visibility="team", tags="a, b"),
    "model-import": ui("team", "model.register", "POST", source="hub", ref="acme/tiny@main"),
    "adapter-upload": ui("team", "model.register", "POST", base_version="{version_id}", file="<adapter.zip>"),
    "model-compare": ui("team", "model.view", a="1", b="1"),
    "version-detail": ui("team", "model.view"),
    "version-progress": ui("team", "model.view"),
    "version-promote": ui("team", "model.promote", "POST", alias="staging"),
    "version-archive": ui("team", "model.register", "POST"),
    "version-purge": ui("team", "model.register", "POST"),
    "version-verify": ui("team", "model.register", "POST"),
    # The world's version is a base: a permitted caller is refused with the reason (not an adapter).
    "version-merge": ui("team", "model.register", "POST"),
    "version-chat-template": ui(
        "team", "model.register", "POST", chat_template="{% for m in messages %}{% endfor %}"
    ),
}

API_ROUTES: dict[str, Rule] = {
    "GET /me": rest("signed_in"),
    "GET /departments": rest("signed_in"),
    "POST /departments": rest("org", "department.create", "POST", name="Finance", cost_center="CC-900"),
    "GET /departments/{department_id}": rest("team", "department.view"),
    "PUT /departments/{department_id}": rest(
        "team", "department.change", "PUT", name="Ops", cost_center="CC-100"
    ),
    "GET /departments/{department_id}/roles": rest("team", "department.view"),
    "POST /departments/{department_id}/roles": rest("team", "department.change", "POST", username="newbie"),
    "DELETE /departments/{department_id}/roles/{user_id}": rest("team", "department.change", "DELETE"),
    "GET /teams": rest("signed_in"),
    "POST /teams": rest("org", "team.create", "POST", department_id="{department_id}", name="New team"),
    "GET /teams/{team_id}": rest("team", "team.view"),
    "PATCH /teams/{team_id}": rest("team", "team.change", "PATCH", name="Renamed"),
    "GET /teams/{team_id}/members": rest("team", "member.view"),
    "POST /teams/{team_id}/members": rest("team", "member.manage", "POST", username="newbie", role="viewer"),
    "PATCH /memberships/{membership_id}": rest("team", "member.manage", "PATCH", role="engineer"),
    "DELETE /memberships/{membership_id}": rest("team", "member.manage", "DELETE"),
    "GET /users": rest("org", "user.view"),
    "POST /users": rest("org", "user.manage", "POST", username="newcomer"),
    "GET /users/{user_id}": rest("org", "user.view"),
    "POST /users/{user_id}/deactivate": rest("org", "user.manage", "POST"),
    "POST /users/{user_id}/reactivate": rest("org", "user.manage", "POST"),
    "PUT /users/{user_id}/org-roles": rest("org", "user.manage", "PUT", roles=["auditor"]),
    "GET /sso/mappings": rest("org", "user.view"),
    "POST /sso/mappings": rest(
        "org", "user.manage", "POST", kind="group", value="/auditors", org_role="auditor"
    ),
    "DELETE /sso/mappings/{mapping_id}": rest("org", "user.manage", "DELETE"),
    "GET /tokens": rest("signed_in"),
    "POST /tokens": rest("signed_in", method="POST", name="ci"),
    "DELETE /tokens/{token_id}": rest("own", method="DELETE"),
    "GET /audit/events": rest("org", "audit.view"),
    "GET /audit/signing-keys": rest("org", "audit.view"),
    "POST /audit/export": rest("org", "audit.export", "POST"),
    "GET /models": rest("signed_in"),
    "POST /models": rest("team", "model.register", "POST", name="new-model", owner_team_id="{team_id}"),
    "GET /models/{name}": rest("team", "model.view"),
    "PUT /models/{name}": rest("team", "model.register", "PUT", task="chat", visibility="team"),
    "GET /models/{name}/versions": rest("team", "model.view"),
    "GET /models/{name}/versions/{number}": rest("team", "model.view"),
    "POST /models/{name}/imports": rest("team", "model.register", "POST", source="hub", ref="acme/tiny@main"),
    "POST /models/{name}/uploads": ui(
        "team", "model.register", "POST", base_version_id="{version_id}", file="<adapter.zip>"
    ),
    "POST /models/{name}/versions/{number}/promote": rest("team", "model.promote", "POST", alias="staging"),
    "POST /models/{name}/versions/{number}/archive": rest("team", "model.register", "POST"),
    "POST /models/{name}/versions/{number}/purge": rest("team", "model.register", "POST"),
    "GET /models/{name}/versions/{number}/files/{path:path}": rest("team", "model.view"),
    "POST /models/{name}/versions/{number}/verify": rest("team", "model.register", "POST"),
    "POST /models/{name}/versions/{number}/merge": rest("team", "model.register", "POST"),
    "POST /models/{name}/versions/{number}/chat-template": rest(
        "team", "model.register", "POST", chat_template="{% for m in messages %}{% endfor %}"
    ),
    "GET /models/{name}/lineage": rest("team", "model.view"),
    "GET /models/{name}/compare": rest("team", "model.view", a="1", b="1"),
    # Serving
    "GET /pools": rest("signed_in"),
    "POST /pools": rest("org", "pool.manage", "POST", name="gpu-pool", kind="gpu"),
    "GET /nodes": rest("signed_in"),
    "POST /nodes/{node}/state": rest("org", "pool.manage", "POST", state="cordoned"),
    "GET /deployments": rest("signed_in"),
    "POST /deployments": rest(
        "team",
        "deployment.manage",
        "POST",
        name="new-dep",
        team_id="{team_id}",
        version_id="{version_id}",
        pool="local-cpu",
        replicas=0,
    ),
    "GET /deployments/{deployment}": rest("team", "team.view"),
    "POST /deployments/{deployment}/scale": rest("team", "deployment.manage", "POST", replicas=0),
    "POST /deployments/{deployment}/restart": rest("team", "deployment.manage", "POST"),
    "POST /deployments/{deployment}/update-strategy": rest(
        "team", "deployment.manage", "POST", update_strategy="replace"
    ),
    # No rolling change under way in the world: the allowed answer is a 409 saying so.
    "POST /deployments/{deployment}/replace-in-place": rest("team", "deployment.manage", "POST"),
    "DELETE /deployments/{deployment}": rest("team", "deployment.manage", "DELETE"),
    "POST /deployments/{deployment}/adapters": rest(
        "team", "deployment.manage", "POST", version_id="{version_id}"
    ),
    "DELETE /deployments/{deployment}/adapters/{adapter}": rest("team", "deployment.manage", "DELETE"),
    "GET /deployments/{deployment}/events": rest("team", "team.view"),
    "GET /deployments/{deployment}/logs": rest("team", "deployment.manage"),
    "GET /endpoints": rest("signed_in"),
    "POST /endpoints": rest(
        "team",
        "deployment.manage",
        "POST",
        name="new-ep",
        team_id="{team_id}",
        routes=[{"deployment": "smol"}],
    ),
    "GET /endpoints/{endpoint}": rest("team", "team.view"),
    "PUT /endpoints/{endpoint}/routes": rest(
        "team", "deployment.manage", "PUT", routes=[{"deployment": "smol"}]
    ),
    # The world's endpoint is plain with routes: made plain again (allowed), or refused before anything changes.
    "PUT /endpoints/{endpoint}/config": rest("team", "deployment.manage", "PUT", kind="plain"),
    "DELETE /endpoints/{endpoint}": rest("team", "deployment.manage", "DELETE"),
    "GET /endpoints/{endpoint}/shares": rest("team", "team.view"),
    "POST /endpoints/{endpoint}/shares": rest("team", "endpoint.share", "POST", organisation=True),
    # Without a target: refused as invalid, after the permission decision.
    "DELETE /endpoints/{endpoint}/shares": rest("team", "endpoint.share", "DELETE"),
    # Rollouts, as for editing the routes; the world's endpoint routes to smol already (refused as invalid,
    # after the permission decision), and has no rollout to abort (409).
    "POST /endpoints/{endpoint}/rollouts": rest("team", "deployment.manage", "POST", deployment="smol"),
    "GET /endpoints/{endpoint}/rollouts": rest("team", "team.view"),
    "POST /endpoints/{endpoint}/rollouts/abort": rest("team", "deployment.manage", "POST"),
    # Gateway keys and usage
    "GET /teams/{team_id}/keys": rest("team", "apikey.manage"),
    "POST /teams/{team_id}/keys": rest("team", "apikey.manage", "POST", name="ci key"),
    # Scopes and addresses: owners and developers; limits and budgets (and the policy): owners only.
    "PATCH /keys/{key_id}": rest("team", "apikey.manage", "PATCH", allowed_ips=["10.0.0.0/8"]),
    "PUT /keys/{key_id}": rest(
        "team",
        "apikey.limits",
        "PUT",
        scopes=[],
        allowed_ips=[],
        rpm_limit=10,
        tpm_limit=None,
        monthly_token_budget=None,
        monthly_budget=None,
    ),
    "GET /teams/{team_id}/key-policy": rest("team", "team.view"),
    "PATCH /teams/{team_id}/key-policy": rest("team", "apikey.limits", "PATCH", rpm_limit=100),
    "DELETE /keys/{key_id}": rest("team", "apikey.manage", "DELETE"),
    "GET /usage": rest("signed_in"),
    # Fine-tuning jobs and evaluations
    "GET /training/jobs": rest("signed_in"),
    "POST /training/jobs": Rule(
        "team",
        "training.run",
        "POST",
        {
            "base_version_id": "{version_id}",
            "dataset_version_id": "{dataset_version_id}",
            "pool": "local-cpu",
            "method": "qlora",
        },
        json=True,
    ),
    "GET /training/jobs/{job_id}": rest("team", "team.view"),
    "POST /training/jobs/{job_id}/cancel": rest("team", "training.run", "POST"),
    "GET /training/merges/{merge_id}": rest("team", "team.view"),
    "GET /training/evals": rest("signed_in"),
    # Tasks, their eval sets and leaderboards, eval runs of endpoints (the world's run is queued)
    "GET /tasks": rest("signed_in"),
    "POST /tasks": rest(
        "team", "training.run", "POST", owner_team_id="{team_id}", name="Routing", kind="classification"
    ),
    "GET /tasks/{task_id}": rest("team", "model.view"),
    "POST /tasks/{task_id}/eval-runs": rest(
        "team", "training.run", "POST", endpoint_id="{endpoint_id}", eval_set_id="{eval_set_id}", row_limit=5
    ),
    "GET /tasks/{task_id}/compare": rest("team", "model.view", run="{eval_run_id}"),
    "GET /eval-runs/{run_id}": rest("team", "model.view"),
    "POST /eval-runs/{run_id}/cancel": rest("team", "training.run", "POST"),
    # The portfolio: the world's task is served by smol-ep; a canary of smol-ep itself is refused as
    # invalid (it has no finished run), after the permission decision.
    "GET /portfolio": rest("signed_in"),
    "PUT /portfolio/{task_id}/production": rest("team", "training.run", "PUT", endpoint_id="{endpoint_id}"),
    "POST /portfolio/{task_id}/canary": rest("team", "deployment.manage", "POST", candidate="smol-ep"),
    # Training data
    "GET /datasets": rest("signed_in"),
    "POST /datasets": rest(
        "team", "training.run", "POST", name="new-set", owner_team_id="{team_id}", kind="chat"
    ),
    "GET /datasets/{dataset_id}": rest("team", "model.view"),
    "GET /datasets/{dataset_id}/versions": rest("team", "model.view"),
    "POST /datasets/{dataset_id}/versions": ui("team", "training.run", "POST", file="<dataset.jsonl>"),
    "GET /datasets/{dataset_id}/versions/{number}": rest("team", "model.view"),
    "GET /datasets/{dataset_id}/ingests/{ingest_id}": rest("team", "model.view"),
    "GET /datasets/{dataset_id}/versions/{number}/rows": rest("team", "model.view", split="eval"),
    "GET /datasets/{dataset_id}/versions/{number}/files/{filename}": rest("team", "model.view"),
    # The world's version is in use (a queued job, a queued eval run) and not archived: a permitted caller is
    # refused (409) after the permission decision.
    "POST /datasets/{dataset_id}/versions/{number}/archive": rest("team", "training.run", "POST"),
    "POST /datasets/{dataset_id}/versions/{number}/purge": rest("team", "training.run", "POST"),
}

# Billing's routes are declared in tests/billing/route_rules.py with the scope "billing": their readers
# (department managers, owners of some teams only) are not the team-scoped matrix's, and
# tests/billing/test_permissions.py checks each of them for every role.
with contextlib.suppress(ModuleNotFoundError):
    API_ROUTES.update(importlib.import_module("tests.billing.route_rules").API_ROUTES)

# Each app with UI pages declares them in tests/<app>/route_rules.py (UI_ROUTES).
for _app in ("serving", "gateway", "training", "billing"):
    with contextlib.suppress(ModuleNotFoundError):
        UI_ROUTES.update(importlib.import_module(f"tests.{_app}.route_rules").UI_ROUTES)


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
