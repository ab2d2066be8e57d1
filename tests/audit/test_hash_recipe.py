"""The README's hash recipe, followed to the letter by someone without this code base, gives the chain's
hashes: the README and ``chain`` cannot drift apart."""

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import chain
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent

ROOT = Path(__file__).resolve().parents[2]

# The README's words, quoted: each must stay in its "Verifying the audit trail" section as written here.
RECIPE = 'json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)'
STATED = [
    "lowercase hex SHA-256 of the UTF-8 bytes of Python's",
    "where `fields` is the row without `hash`",
    "`2e-05`, `0.0`",
    "`occurred_at` is UTC with six fraction digits: `2026-12-01T09:30:00.123456Z`",
]


def _readme_section() -> str:
    """The section with its line breaks as spaces: rewrapping the README changes nothing here."""
    text = (ROOT / "README.md").read_text()
    start = text.index("### Verifying the audit trail")
    return " ".join(text[start : text.index("\n## ", start)].split())


def readme_hash(row: dict) -> str:
    """The reference implementation, from the README alone."""
    fields = {name: value for name, value in row.items() if name != "hash"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def readme_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_readme_states_the_recipe_the_reference_implementation_follows():
    section = _readme_section()
    assert RECIPE in section
    for words in STATED:
        assert words in section, words


def test_the_readme_recipe_gives_the_hash_of_a_fixed_row():
    row = {
        "sequence": 7,
        "occurred_at": readme_time(datetime(2026, 12, 1, 10, 30, 0, 5, tzinfo=timezone(timedelta(hours=1)))),
        "actor_kind": "user",
        "actor_label": "Zoë",
        "actor_user_id": 3,
        "actor_token_id": None,
        "action": "billing.price_update",
        "object_type": "billing.price",
        "object_id": "4",
        "object_repr": "GPU-hour für Forschung",
        "department_id": None,
        "team_id": 2,
        "request_id": "req-1",
        "ip": "10.1.2.3",
        "user_agent": "Mozilla/5.0",
        "before": {"rate": 1.0},
        "after": {"rate": 2e-05, "ratio": 1.0, "note": "Zoë"},
        "prev_hash": "ab" * 32,
    }
    assert row["occurred_at"] == "2026-12-01T09:30:00.000005Z"
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '"rate":2e-05' in canonical and '"ratio":1.0' in canonical and '"note":"Zoë"' in canonical
    assert readme_hash(row) == chain.compute_hash(row)


@pytest.mark.django_db
def test_the_readme_recipe_gives_the_hash_of_a_stored_event():
    with transaction.atomic():
        recorded = audit.record(
            Actor.for_system("tests"),
            "team.update",
            object_type="test",
            object_id="1",
            object_repr="Zoë",
            after={"rate": 2e-05, "ratio": 1.0, "zero": 0.0},
        )
    event = AuditEvent.objects.get(pk=recorded.pk)
    row = {name: getattr(event, name) for name in chain.FIELDS} | {
        "occurred_at": readme_time(event.occurred_at)
    }
    assert readme_hash(row) == event.hash
