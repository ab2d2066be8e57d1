"""The permission decision of each route, for tests/test_route_permissions.py: the pages of accounts and the
registry, and every operation of the REST API, declared here; each app's pages (and billing's REST routes)
in tests/<app>/route_rules.py, added below."""

from __future__ import annotations

import contextlib
import importlib

from tests.permissions import Rule, rest, ui

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
    # The world's model has the alias staging (not guarded: engineers remove it too).
    "alias-remove": ui("team", "model.promote", "POST"),
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
    "DELETE /models/{name}/aliases/{alias}": rest("team", "model.promote", "DELETE"),
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
    # The world's eval set has a queued run: a permitted caller is refused (409) after the decision.
    "DELETE /tasks/{task_id}/eval-sets/{eval_set_id}": rest("team", "training.run", "DELETE"),
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
