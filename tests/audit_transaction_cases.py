"""The service calls of every app that must commit together with their audit row, one case each: the call,
the audit action it writes, and any state it needs first (see test_audit_transactions.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from portfolio.accounts import personal_tokens
from portfolio.accounts import services as accounts
from portfolio.accounts.choices import OrgRole, TeamRole
from portfolio.accounts.models import ExternalIdentity, Membership, PersonalToken, SsoMappingRule
from portfolio.accounts.sso import mapping as sso_mapping
from portfolio.accounts.sso import rules as sso_rules
from portfolio.accounts.sso import services as sso_services
from portfolio.registry import artifacts, importing
from portfolio.registry import services as registry
from portfolio.registry.choices import Source
from portfolio.registry.inspection import ModelFacts
from serving import agent, reconcile, rollouts
from serving import services as serving
from serving.choices import NodeState, PoolKind
from serving.gateway import services as gateway
from serving.models import DeploymentAdapter, Node, Rollout
from tests.audit_transaction_world import GIB, ROWS, SHAPE
from training import finetune, ingest
from training import services as training
from training.choices import JobStatus
from training.evals import catalogue
from training.evals import runs as eval_runs


@dataclass(frozen=True)
class Case:
    name: str
    action: str  # the audit row the change writes
    call: Any  # World -> None: the service call
    prepare: Any = None  # World -> None: state the call needs, set before the snapshot

    def __str__(self) -> str:
        return self.name


def _attached(world) -> str:
    """The adapter the add_adapter case attached: a rollout's candidate."""
    return DeploymentAdapter.objects.get(deployment=world.deployment).name


CASES: dict[str, list[Case]] = {
    "accounts": [
        Case(
            "create_department",
            "department.create",
            lambda w: accounts.create_department(actor=w.admin, name="Finance", cost_center="CC-900"),
        ),
        Case(
            "update_department",
            "department.update",
            lambda w: accounts.update_department(
                actor=w.admin, department=w.team.department, name="Renamed", cost_center="CC-901"
            ),
        ),
        Case(
            "create_team",
            "team.create",
            lambda w: accounts.create_team(actor=w.admin, department=w.team.department, name="Voice"),
        ),
        Case(
            "update_team",
            "team.update",
            lambda w: accounts.update_team(
                actor=w.owner, team=w.team, name="Support AI", description="New words."
            ),
        ),
        Case(
            "add_member",
            "membership.create",
            lambda w: accounts.add_member(
                actor=w.owner, team=w.team, user=w.users["outsider"], role=TeamRole.VIEWER
            ),
        ),
        Case(
            "change_member_role",
            "membership.update",
            lambda w: accounts.change_member_role(
                actor=w.owner,
                role=TeamRole.DEVELOPER,
                membership=Membership.objects.get(user=w.users["viewer"]),
            ),
        ),
        Case(
            "remove_member",
            "membership.delete",
            lambda w: accounts.remove_member(
                actor=w.owner, membership=Membership.objects.get(user=w.users["viewer"])
            ),
        ),
        Case("create_user", "user.create", lambda w: accounts.create_user(actor=w.admin, username="erin")),
        Case(
            "set_org_role",
            "org_role.grant",
            lambda w: accounts.set_org_role(
                actor=w.admin, user=w.users["viewer"], role=OrgRole.AUDITOR, granted=True
            ),
        ),
        Case(
            "set_org_roles",
            "org_role.grant",
            lambda w: accounts.set_org_roles(
                actor=w.admin, user=w.users["developer"], roles=[OrgRole.AUDITOR]
            ),
        ),
        Case(
            "deactivate_user",
            "user.deactivate",
            lambda w: accounts.deactivate_user(actor=w.admin, user=w.users["viewer"]),
        ),
        Case(
            "reactivate_user",
            "user.reactivate",
            lambda w: accounts.reactivate_user(actor=w.admin, user=w.users["viewer"]),
            prepare=lambda w: (
                type(w.users["viewer"]).objects.filter(pk=w.users["viewer"].pk).update(is_active=False)
            ),
        ),
        Case(
            "change_password",
            "user.password_change",
            lambda w: accounts.change_password(
                actor=w.owner, user=w.users["owner"], new_password="a-new-long-passphrase-2026"
            ),
        ),
        Case(
            "create_personal_token",
            "token.create",
            lambda w: personal_tokens.create_personal_token(actor=w.owner, name="ci"),
        ),
        Case(
            "revoke_personal_token",
            "token.revoke",
            lambda w: personal_tokens.revoke_personal_token(
                actor=w.owner, token=PersonalToken.objects.get(pk=w.token.pk)
            ),
        ),
        Case(
            "create_sso_rule",
            "sso_mapping.create",
            lambda w: sso_rules.create_rule(
                actor=w.admin, kind="group", value="/legal", team=w.other_team, team_role=TeamRole.VIEWER
            ),
        ),
        Case(
            "apply_sso_mapping",
            "membership.create",
            lambda w: sso_mapping.apply(
                w.users["auditor"], {"groups": ["/legal"]}, actor=sso_mapping.system_actor(), client_id="x"
            ),
        ),
        Case(
            "delete_sso_rule",
            "sso_mapping.delete",
            lambda w: sso_rules.delete_rule(actor=w.admin, rule=SsoMappingRule.objects.get(value="/legal")),
        ),
        Case(
            "sso_account_for",
            "user.update",
            lambda w: sso_services.account_for(
                actor=sso_mapping.system_actor(),
                issuer="https://idp.example/realms/r",
                claims={"sub": "e-1", "preferred_username": "engineer", "email": "new@example.com"},
                organisation="Acme",
            ),
            prepare=lambda w: ExternalIdentity.objects.get_or_create(
                user=w.users["engineer"],
                issuer="https://idp.example/realms/r",
                subject="e-1",
                username="engineer",
            ),
        ),
    ],
    "registry": [
        Case(
            "create_model",
            "model.create",
            lambda w: registry.create_model(actor=w.engineer, name="clause-extractor", owner_team=w.team),
        ),
        Case(
            "update_model",
            "model.update",
            lambda w: registry.update_model(
                actor=w.engineer,
                model=w.model,
                description="Routes tickets.",
                visibility=w.model.visibility,
                tags=["routing"],
                license="apache-2.0",
                task=w.model.task,
            ),
        ),
        Case(
            "start_import",
            "model_version.import",
            lambda w: registry.start_import(
                actor=w.engineer, model=w.model, source=Source.HUB, ref="HuggingFaceTB/SmolLM2-135M-Instruct"
            ),
        ),
        Case(
            "fail_import",
            "model_version.failed",
            lambda w: importing.fail_import(w.importing.pk, "worker died"),
        ),
        Case(
            "complete_import",
            "model_version.ready",
            lambda w: importing.complete_import(
                w.importing_too.pk,
                w.manifest(),
                ModelFacts(format="safetensors", parameter_count=1000, shape=SHAPE),
                "file:///store/b",
            ),
        ),
        Case(
            "promote",
            "model.promote",
            lambda w: registry.promote(actor=w.engineer, version=w.base, alias="staging"),
        ),
        Case(
            "archive_version",
            "model_version.archive",
            lambda w: registry.archive_version(actor=w.engineer, version=w.adapter),
        ),
        Case(
            "mark_artifact_health",
            "model_version.corrupt",
            lambda w: artifacts.mark_artifact_health(
                w.base.artifact_id, ["model.safetensors: sha256 differs"]
            ),
        ),
        Case(
            "register_trained_version",
            "model_version.register",
            lambda w: registry.register_trained_version(
                actor=w.engineer,
                model=w.model,
                base_version=w.base,
                manifest=w.manifest(),
                facts=ModelFacts(
                    format="safetensors", parameter_count=1000, is_adapter=True, adapter={"r": 8}
                ),
                store_uri="file:///store/c",
                source=Source.FINE_TUNE,
                source_ref="job 1",
                metrics={},
                model_card="",
            ),
        ),
    ],
    "serving": [
        Case(
            "create_pool",
            "pool.create",
            lambda w: serving.create_pool(actor=w.admin, name="gpu-pool", kind=PoolKind.GPU),
        ),
        Case(
            "update_pool",
            "pool.update",
            lambda w: serving.update_pool(
                actor=w.admin,
                pool=w.pool,
                description="Two sockets.",
                teams=[w.team],
            ),
        ),
        Case(
            "create_deployment",
            "deployment.create",
            lambda w: serving.create_deployment(
                actor=w.owner, name="new-bot", team=w.team, version=w.base, pool=w.pool, replicas=1
            ),
        ),
        Case(
            "scale",
            "deployment.scale",
            lambda w: serving.scale(actor=w.owner, deployment=w.deployment, replicas=2),
        ),
        Case(
            "restart", "deployment.restart", lambda w: serving.restart(actor=w.owner, deployment=w.deployment)
        ),
        Case(
            "remove_adapter",
            "deployment.adapter_remove",
            lambda w: serving.remove_adapter(actor=w.owner, attached=DeploymentAdapter.objects.get()),
            prepare=lambda w: w.attached,
        ),
        Case(
            "add_adapter",
            "deployment.adapter_add",
            lambda w: serving.add_adapter(actor=w.owner, deployment=w.deployment, adapter=w.adapter),
        ),
        Case(
            "delete_deployment",
            "deployment.delete",
            lambda w: serving.delete_deployment(actor=w.owner, deployment=w.stopped_deployment),
        ),
        Case(
            "create_endpoint",
            "endpoint.create",
            lambda w: serving.create_endpoint(
                actor=w.owner, name="support-2", team=w.team, routes=[{"deployment": w.deployment.name}]
            ),
        ),
        Case(
            "set_routes",
            "endpoint.routes",
            lambda w: serving.set_routes(
                actor=w.owner, endpoint=w.endpoint, routes=[{"deployment": w.deployment.name, "weight": 50}]
            ),
        ),
        Case(
            "start_rollout",
            "rollout.start",
            lambda w: serving.start_rollout(
                actor=w.owner, endpoint=w.endpoint, deployment=w.deployment.name, adapter=_attached(w)
            ),
        ),
        Case(
            "rollouts.step",
            "rollout.rollback",  # the window is over and the canary answered nothing
            lambda w: rollouts.step(Rollout.objects.get(state="canary").pk),
            prepare=lambda w: Rollout.objects.filter(state="canary").update(
                ends_at=timezone.now() - timedelta(minutes=1)
            ),
        ),
        Case(
            "abort_rollout",
            "rollout.abort",
            lambda w: serving.abort_rollout(actor=w.owner, endpoint=w.endpoint),
            prepare=lambda w: serving.start_rollout(
                actor=w.owner, endpoint=w.endpoint, deployment=w.deployment.name, adapter=_attached(w)
            ),
        ),
        Case(
            "delete_endpoint",
            "endpoint.delete",
            lambda w: serving.delete_endpoint(actor=w.owner, endpoint=w.endpoint),
        ),
        Case(
            "agent.register",
            "node.register",
            lambda w: agent.register(
                "cpu-02", w.pool.name, "127.0.0.2", {"cpu_cores": 2, "memory_bytes": 8 * GIB, "gpus": []}
            ),
        ),
        Case(
            "set_node_state",
            "node.cordon",
            lambda w: serving.set_node_state(actor=w.admin, node=w.node, state=NodeState.CORDONED),
        ),
        Case(
            "reconcile.mark_lost_nodes",
            "node.lost",
            lambda w: reconcile.mark_lost_nodes(),
            prepare=lambda w: Node.objects.filter(pk=w.node.pk).update(
                heartbeat_at=timezone.now() - timedelta(days=1)
            ),
        ),
    ],
    "gateway": [
        Case(
            "create_key",
            "apikey.create",
            lambda w: gateway.create_key(actor=w.developer, team=w.team, name="bot"),
        ),
        Case(
            "update_key",
            "apikey.update",
            lambda w: gateway.update_key(
                actor=w.owner,
                key=w.key,
                scopes=[],
                allowed_ips=["10.0.0.0/8"],
                rpm_limit=60,
                tpm_limit=None,
                monthly_token_budget=None,
                monthly_budget=None,
            ),
        ),
        Case("revoke_key", "apikey.revoke", lambda w: gateway.revoke_key(actor=w.owner, key=w.key)),
        Case(
            "update_key_policy",
            "keypolicy.update",
            lambda w: gateway.update_key_policy(actor=w.owner, team=w.team, rpm_limit=60),
        ),
    ],
    "training": [
        Case(
            "create_dataset",
            "dataset.create",
            lambda w: training.create_dataset(actor=w.engineer, owner_team=w.team, name="intents"),
        ),
        Case(
            "upload_version",
            "dataset.upload",
            lambda w: training.upload_version(
                actor=w.engineer, dataset=w.dataset, chunks=[ROWS], filename="rows.jsonl"
            ),
        ),
        Case(
            "record_ingested_version",
            "dataset_version.create",
            lambda w: ingest.record(w.ingested.ingest, w.ingested.prepared, w.engineer),
        ),
        Case(
            "start_job",
            "training.job_start",
            lambda w: finetune.start_job(
                actor=w.engineer, base_version=w.base, dataset_version=w.dataset_version, pool=w.pool
            ),
        ),
        Case(
            "start_distillation",
            "training.distillation_start",
            lambda w: finetune.start_distillation(
                actor=w.engineer, teacher=w.endpoint, prompts=w.dataset_version, student=w.base, pool=w.pool
            ),
        ),
        Case("cancel_job", "training.job_cancel", lambda w: finetune.cancel_job(actor=w.engineer, job=w.job)),
        Case(
            "finish",
            "training.job_failed",
            lambda w: finetune.finish(w.running_job.pk, JobStatus.FAILED, "boom"),
        ),
        Case(
            "record_eval_run",
            "training.eval_run",
            lambda w: finetune.record_eval_run(w.job, w.base, {"accuracy": 0.5}),
        ),
        Case(
            "create_task",
            "task.create",
            lambda w: catalogue.create_task(
                actor=w.engineer, owner_team=w.team, name="Ticket triage", kind="classification"
            ),
        ),
        Case(
            "add_eval_set",
            "eval_set.create",
            lambda w: catalogue.add_eval_set(
                actor=w.engineer, task=w.task, dataset_version=w.dataset_version, source="all"
            ),
        ),
        Case(
            "start_eval_run",
            "eval.run_start",
            lambda w: eval_runs.start_run(
                actor=w.engineer, task=w.task, eval_set=w.eval_set, endpoint=w.endpoint
            ),
        ),
        Case(
            "cancel_eval_run",
            "eval.run_cancel",
            lambda w: eval_runs.cancel_run(actor=w.engineer, run=w.running_eval_run),
        ),
        Case(
            "finish_eval_run",
            "eval.run_finish",
            lambda w: eval_runs.finish(w.running_eval_run.pk, JobStatus.FAILED, "boom"),
        ),
    ],
}
