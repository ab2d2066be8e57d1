"""Writing the audit trail. Service functions call ``record`` inside their own transaction."""

from __future__ import annotations

import json
from decimal import Decimal

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import chain
from portfolio.audit.choices import KNOWN as KNOWN_ACTIONS
from portfolio.audit.models import AuditEvent

# One writer at a time extends the chain; the lock is released when the writer's transaction ends.
_CHAIN_LOCK_ID = 0x5F0A_0D17


def _as_stored(text: str) -> float | int:
    """A JSON float as it reads back from PostgreSQL's jsonb: a number written with a positive exponent (what
    Python writes for floats from 1e16 up) is stored as a numeric with no fraction and read back as an
    integer, so it is hashed as that integer (1e+20 as 100000000000000000000), not as a float."""
    if "e+" in text.lower():
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    value = float(text)
    # A numeric zero has no sign: -0.0 reads back as 0.0, and hashing "-0.0" would break the chain for good.
    return 0.0 if value == 0 else value


def _plain(value):
    """Snapshots may hold dates, decimals or UUIDs: store exactly what the hash will cover, as it will read
    back from the database."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder), parse_float=_as_stored)


def _scope_of(obj) -> tuple[int | None, int | None]:
    """(department id, team id) an object belongs to, for filtering the trail."""
    from portfolio.accounts.models import Department, Team

    if isinstance(obj, Department):
        return obj.pk, None
    if isinstance(obj, Team):
        return obj.department_id, obj.pk
    team = getattr(obj, "team", None) or getattr(obj, "owner_team", None)
    if isinstance(team, Team):
        return team.department_id, team.pk
    department = getattr(obj, "department", None)  # a statement, a department's budget or role
    if isinstance(department, Department):
        return department.pk, None
    return None, None


def record(
    actor: Actor,
    action: str,  # an AuditAction (a TextChoices member is a str)
    obj=None,
    *,
    before: dict | None = None,
    after: dict | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    object_repr: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction (a failed change leaves no row)."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record must run inside the transaction of the change it records")
    if action not in KNOWN_ACTIONS:
        # A programming error, like an unknown capability: the trail keeps one vocabulary.
        raise ValueError(f"audit: {action!r} is not an AuditAction (portfolio/audit/choices.py)")
    with connection.cursor() as cursor:
        # The time is the database's, read once the chain is this writer's, and never before the last
        # event's: writers on other machines (node agents) have clocks of their own, and a time-range export
        # is signed as contiguous on the understanding that time rises with the sequence.
        cursor.execute("SELECT pg_advisory_xact_lock(%s), clock_timestamp()", [_CHAIN_LOCK_ID])
        now = cursor.fetchone()[1]
    last = AuditEvent.objects.order_by("-sequence").values("sequence", "hash", "occurred_at").first()
    department_id, team_id = _scope_of(obj) if obj is not None else (None, None)
    user = actor.user
    event = AuditEvent(
        sequence=(last["sequence"] + 1) if last else 1,
        occurred_at=max(now, last["occurred_at"]) if last else now,
        actor_kind=actor.kind,
        actor_label=actor.label[:150],
        actor_user_id=user.pk if user is not None else None,
        actor_token_id=actor.token_id or actor.api_key_id,
        action=str(action),  # the plain value, whether a string or an AuditAction came
        object_type=object_type or (obj._meta.label_lower if obj is not None else ""),
        object_id=str(object_id if object_id is not None else (obj.pk if obj is not None else "")),
        object_repr=(object_repr if object_repr is not None else (str(obj) if obj is not None else ""))[:200],
        department_id=department_id,
        team_id=team_id,
        request_id=(actor.request_id or "")[:64],
        ip=actor.ip or "",
        user_agent=(actor.user_agent or "")[:300],
        before=_plain(before),
        after=_plain(after),
        prev_hash=last["hash"] if last else chain.GENESIS_HASH,
    )
    event.hash = chain.compute_hash(chain.fields_of(event))
    event.save(force_insert=True)
    return event


@transaction.atomic
def record_standalone(actor: Actor, action: str, obj=None, **kwargs) -> AuditEvent:
    """For events that are not part of a data change (a login, an export): their own transaction."""
    return record(actor, action, obj, **kwargs)
