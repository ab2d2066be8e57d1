"""The audit trail's one vocabulary: every action a service records, named ``<object>.<verb>``.

``audit.record`` refuses an action that is not here, and tests/audit/test_actions.py reads the code for
calls that would; a new audited change adds its action here first. Strings, not imports: the apps above
the foundation (serving, training) are named here without being imported.
"""

from __future__ import annotations

from django.db import models


class AuditAction(models.TextChoices):
    # Accounts: departments, teams, memberships, users, roles, tokens, sign-ins
    DEPARTMENT_CREATE = "department.create", "Department created"
    DEPARTMENT_UPDATE = "department.update", "Department changed"
    TEAM_CREATE = "team.create", "Team created"
    TEAM_UPDATE = "team.update", "Team changed"
    MEMBERSHIP_CREATE = "membership.create", "Member added"
    MEMBERSHIP_UPDATE = "membership.update", "Member's role changed"
    MEMBERSHIP_DELETE = "membership.delete", "Member removed"
    USER_CREATE = "user.create", "User created"
    USER_UPDATE = "user.update", "User's name or email changed"
    USER_DEACTIVATE = "user.deactivate", "User deactivated"
    USER_REACTIVATE = "user.reactivate", "User reactivated"
    USER_SSO_RELINK = "user.sso_relink", "User relinked to a single sign-on identity"
    USER_PASSWORD_CHANGE = "user.password_change", "Password changed"
    USER_LOGIN = "user.login", "Signed in"
    USER_LOGOUT = "user.logout", "Signed out"
    USER_LOGIN_FAILED = "user.login_failed", "Sign-in failed"
    USER_LOGIN_LOCKED = "user.login_locked", "Sign-in locked"
    USER_LOGIN_AUDIT_PAUSED = "user.login_audit_paused", "Sign-in audit paused (budget spent)"
    ORG_ROLE_GRANT = "org_role.grant", "Organisation role granted"
    ORG_ROLE_REVOKE = "org_role.revoke", "Organisation role revoked"
    TOKEN_CREATE = "token.create", "Personal token created"
    TOKEN_REVOKE = "token.revoke", "Personal token revoked"
    SSO_MAPPING_CREATE = "sso_mapping.create", "Single sign-on mapping rule added"
    SSO_MAPPING_DELETE = "sso_mapping.delete", "Single sign-on mapping rule removed"
    # Audit
    AUDIT_EXPORT = "audit.export", "Audit trail exported"
    # Registry
    MODEL_CREATE = "model.create", "Model created"
    MODEL_UPDATE = "model.update", "Model changed"
    MODEL_PROMOTE = "model.promote", "Version promoted"
    MODEL_ALIAS_REMOVE = "model.alias_remove", "Alias removed"
    MODEL_VERSION_IMPORT = "model_version.import", "Version import started"
    MODEL_VERSION_READY = "model_version.ready", "Version imported"
    MODEL_VERSION_FAILED = "model_version.failed", "Version import failed"
    MODEL_VERSION_REGISTER = "model_version.register", "Trained version registered"
    MODEL_VERSION_CHAT_TEMPLATE = "model_version.chat_template", "Chat template set"
    MODEL_VERSION_ARCHIVE = "model_version.archive", "Version archived"
    MODEL_VERSION_PURGE = "model_version.purge", "Archived version's stored files deleted"
    MODEL_VERSION_CORRUPT = "model_version.corrupt", "Version's files found corrupt"
    MODEL_VERSION_HEALTHY = "model_version.healthy", "Version's files found intact"
    MODEL_VERSION_ARCHITECTURE = "model_version.architecture", "Version's architecture read from its files"
    MODEL_VERSION_MERGE_START = "model_version.merge_start", "Adapter merge started"
    MODEL_VERSION_MERGE = "model_version.merge", "Merged version registered"
    MODEL_VERSION_MERGE_FAILED = "model_version.merge_failed", "Adapter merge failed"
    # Serving: pools, nodes, deployments, endpoints
    POOL_CREATE = "pool.create", "Pool created"
    POOL_UPDATE = "pool.update", "Pool changed"
    NODE_REGISTER = "node.register", "Node registered"
    NODE_RECOVER = "node.recover", "Node recovered"
    NODE_UPDATE = "node.update", "Node's address or capacity changed"
    NODE_LOST = "node.lost", "Node lost"
    NODE_CORDON = "node.cordon", "Node cordoned"
    NODE_DRAIN = "node.drain", "Node drained"
    NODE_UNCORDON = "node.uncordon", "Node made ready"
    DEPLOYMENT_CREATE = "deployment.create", "Deployment created"
    DEPLOYMENT_SCALE = "deployment.scale", "Deployment scaled"
    DEPLOYMENT_STOP = "deployment.stop", "Deployment stopped"
    DEPLOYMENT_RESTART = "deployment.restart", "Deployment restarted"
    DEPLOYMENT_UPDATE = "deployment.update", "Deployment's version or arguments changed"
    DEPLOYMENT_UPDATE_STRATEGY = "deployment.update_strategy", "Deployment's update strategy changed"
    DEPLOYMENT_REPLACE_IN_PLACE = "deployment.replace_in_place", "Rolling change switched to replace in place"
    DEPLOYMENT_ADAPTER_ADD = "deployment.adapter_add", "Adapter added"
    DEPLOYMENT_ADAPTER_REMOVE = "deployment.adapter_remove", "Adapter removed"
    DEPLOYMENT_DELETE = "deployment.delete", "Deployment deleted"
    ENDPOINT_CREATE = "endpoint.create", "Endpoint created"
    ENDPOINT_ROUTES = "endpoint.routes", "Endpoint's routes changed"
    ENDPOINT_CONFIGURE = "endpoint.configure", "Endpoint's kind or composite configuration changed"
    ENDPOINT_DELETE = "endpoint.delete", "Endpoint deleted"
    ENDPOINT_SHARE = "endpoint.share", "Endpoint shared"
    ENDPOINT_UNSHARE = "endpoint.unshare", "Endpoint's share withdrawn"
    ROLLOUT_START = "rollout.start", "Rollout started (canary)"
    ROLLOUT_PROMOTE = "rollout.promote", "Rollout promoted"
    ROLLOUT_ROLLBACK = "rollout.rollback", "Rollout rolled back"
    ROLLOUT_ABORT = "rollout.abort", "Rollout aborted"
    ROLLOUT_JUDGE = "rollout.judge", "Rollout's canary answers judged"
    # Gateway
    APIKEY_CREATE = "apikey.create", "API key created"
    APIKEY_UPDATE = "apikey.update", "API key changed"
    APIKEY_REVOKE = "apikey.revoke", "API key revoked"
    KEYPOLICY_UPDATE = "keypolicy.update", "Team's key policy changed"
    USAGE_DROP_MONTH = "usage.drop_month", "A month's raw usage events dropped (past retention)"
    # Billing: price book, statements
    PRICE_SET = "price.set", "Price set"
    STATEMENT_CLOSE = "statement.close", "Statement closed"
    STATEMENT_REISSUE = "statement.reissue", "Statement re-issued"
    STATEMENT_EXPORT = "statement.export", "Statement exported"
    DEPARTMENT_ROLE_GRANT = "department_role.grant", "Department role granted"
    DEPARTMENT_ROLE_REVOKE = "department_role.revoke", "Department role revoked"
    BUDGET_SET = "budget.set", "Budget set"
    BUDGET_DELETE = "budget.delete", "Budget removed"
    BUDGET_ALERT = "budget.alert", "Budget alert sent"
    # Training
    DATASET_CREATE = "dataset.create", "Dataset created"
    DATASET_UPLOAD = "dataset.upload", "Dataset file uploaded for ingest"
    DATASET_INGEST_FAILED = "dataset.ingest_failed", "Dataset ingest failed, errored or given up"
    DATASET_INGEST_REUSED = "dataset.ingest_reused", "Dataset ingest matched an existing version"
    DATASET_VERSION_CREATE = "dataset_version.create", "Dataset version created"
    DATASET_VERSION_ARCHIVE = "dataset_version.archive", "Dataset version archived"
    DATASET_VERSION_PURGE = "dataset_version.purge", "Archived dataset version's stored files deleted"
    DATASET_VERSION_RESTORE = "dataset_version.restore", "Archived dataset version uploaded again: ready"
    DATASET_VERSION_CORRUPT = "dataset_version.corrupt", "Dataset version's files found corrupt"
    DATASET_VERSION_HEALTHY = "dataset_version.healthy", "Dataset version's files found intact"
    TRAINING_JOB_START = "training.job_start", "Fine-tune started"
    TRAINING_DISTILLATION_START = "training.distillation_start", "Distillation started"
    TRAINING_JOB_CANCEL = "training.job_cancel", "Job cancelled by a user"
    TRAINING_JOB_REQUEUED = "training.job_requeued", "Job moved off a silent node"
    # training.job_<status>: a job's end, as finetune.finish records it
    TRAINING_JOB_SUCCEEDED = "training.job_succeeded", "Job succeeded"
    TRAINING_JOB_FAILED = "training.job_failed", "Job failed"
    TRAINING_JOB_ERRORED = "training.job_errored", "Job errored"
    TRAINING_JOB_CANCELLED = "training.job_cancelled", "Job ended as cancelled"
    TRAINING_EVAL_RUN = "training.eval_run", "Evaluation recorded"
    TASK_CREATE = "task.create", "Task created"
    TASK_SET_PRODUCTION = "task.set_production", "Task's production endpoint set"
    EVAL_SET_CREATE = "eval_set.create", "Eval set registered"
    EVAL_SET_DELETE = "eval_set.delete", "Eval set deleted, with its runs"
    EVAL_RUN_START = "eval.run_start", "Endpoint eval run started"
    EVAL_RUN_CANCEL = "eval.run_cancel", "Endpoint eval run cancel requested"
    EVAL_RUN_FINISH = "eval.run_finish", "Endpoint eval run finished"

    @property
    def subject(self) -> str:
        """The object part: ``team`` of ``team.create``."""
        return self.value.split(".", 1)[0]


KNOWN = frozenset(AuditAction.values)


def grouped_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """The actions by object for a select: first "every <object> action" (the prefix ``<object>.``, which
    the filters read as a prefix), then each action."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for action in AuditAction:
        groups.setdefault(action.subject, []).append((action.value, f"{action.value} · {action.label}"))
    return [
        (subject, [(f"{subject}.", f"every {subject} action"), *actions])
        for subject, actions in groups.items()
    ]
