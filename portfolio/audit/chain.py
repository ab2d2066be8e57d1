"""The hash chain: each event's hash covers a canonical serialisation of its fields and the previous hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64

# The fields a hash covers, in the order exports write them (the hash itself comes last).
FIELDS = (
    "sequence",
    "occurred_at",
    "actor_kind",
    "actor_label",
    "actor_user_id",
    "actor_token_id",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "department_id",
    "team_id",
    "request_id",
    "ip",
    "user_agent",
    "before",
    "after",
    "prev_hash",
)
INT_FIELDS = frozenset({"sequence", "actor_user_id", "actor_token_id", "department_id", "team_id"})
JSON_FIELDS = frozenset({"before", "after"})


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fields_of(event) -> dict:
    """The hashed fields of a model instance, as plain JSON values."""
    data = {name: getattr(event, name) for name in FIELDS}
    data["occurred_at"] = format_time(event.occurred_at)
    return data


def compute_hash(fields: dict) -> str:
    return hashlib.sha256(canonical_json({name: fields[name] for name in FIELDS}).encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    broken_sequence: int | None = None
    reason: str = ""


def verify(rows: Iterable[dict], *, contiguous: bool = True, start_prev_hash: str | None = None) -> Verdict:
    """Walk rows (hashed fields plus ``hash``) in sequence order; name the first one that does not hold.

    ``contiguous`` rows must follow each other without gaps and link by ``prev_hash``; a filtered export
    is not contiguous, so only each row's own hash is checked there.
    """
    previous_hash, previous_sequence, checked = start_prev_hash, None, 0
    for row in rows:
        sequence = row["sequence"]
        if contiguous:
            if previous_sequence is not None and sequence != previous_sequence + 1:
                return Verdict(False, checked, previous_sequence + 1, "sequence gap: event missing")
            if previous_hash is not None and row["prev_hash"] != previous_hash:
                return Verdict(False, checked, sequence, "previous hash does not match the event before")
        if compute_hash(row) != row["hash"]:
            return Verdict(False, checked, sequence, "hash does not match the event's contents")
        previous_hash, previous_sequence = row["hash"], sequence
        checked += 1
    return Verdict(True, checked)
