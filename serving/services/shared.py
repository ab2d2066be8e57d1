"""Steps every serving change shares: a valid name, and the reconcile that acts on it enqueued on commit."""

from __future__ import annotations

from django.db import transaction

from portfolio.errors import Invalid

# Names that collide with the pages under /pools/, /deployments/ and /endpoints/ ("new" is the create form).
RESERVED_NAMES = frozenset({"new"})


def _check_name(name: str, field: str = "name") -> str:
    from django.core.exceptions import ValidationError

    from serving.models import name_validator

    try:
        name_validator(name)
    except ValidationError as exc:
        raise Invalid(f"{field}: {exc.messages[0]}") from None
    if name in RESERVED_NAMES:
        raise Invalid(f"{field}: {name!r} is reserved by the web UI; choose another name.")
    return name


def _after_commit_reconcile(deployment_id: int) -> None:
    from serving.tasks import reconcile_deployment_task

    transaction.on_commit(lambda: reconcile_deployment_task.delay(deployment_id))
