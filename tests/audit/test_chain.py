"""The audit trail is append-only in PostgreSQL itself, and its hash chain exposes any edit."""

import hashlib
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import chain
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.audit.tasks import anchor_head
from portfolio.audit.verification import verify_database


def _record_some(n: int) -> list[AuditEvent]:
    actor = Actor.for_system("tests")
    with transaction.atomic():
        return [
            audit.record(actor, "team.update", object_type="test", object_id=str(i), after={"i": i})
            for i in range(n)
        ]


@pytest.mark.django_db
def test_events_link_each_to_the_one_before():
    first, second, third = _record_some(3)
    assert first.prev_hash == chain.GENESIS_HASH
    assert (second.prev_hash, third.prev_hash) == (first.hash, second.hash)
    assert [first.sequence, second.sequence, third.sequence] == [1, 2, 3]
    assert verify_database().ok


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET action = 'forged'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_postgresql_refuses_to_change_or_remove_events(statement):
    _record_some(2)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert AuditEvent.objects.count() == 2


@pytest.mark.django_db
def test_the_orm_cannot_edit_an_event_either():
    event = _record_some(1)[0]
    event.action = "forged"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        event.save()


@pytest.mark.django_db
def test_an_edited_row_makes_audit_verify_fail_at_that_sequence(capsys):
    _record_some(5)
    call_command("audit_verify")
    assert "5 events verified" in capsys.readouterr().out
    with connection.cursor() as cursor:  # as the superuser an attacker would need to be
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
        cursor.execute("UPDATE audit_auditevent SET after = '{\"i\": 99}' WHERE sequence = 3")
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")
    with pytest.raises(CommandError, match="broken at sequence 3"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_a_deleted_row_is_reported_as_a_gap():
    _record_some(4)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = 2")
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")
    verdict = verify_database()
    assert (verdict.ok, verdict.broken_sequence) == (False, 2)


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_writers_leave_one_valid_chain():
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def writer(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(5):
                with transaction.atomic():
                    audit.record(
                        Actor.for_system(f"writer-{n}"),
                        "team.update",
                        object_type="t",
                        object_id=f"{n}-{i}",
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert AuditEvent.objects.count() == 100
    assert list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True)) == list(
        range(1, 101)
    )
    verdict = verify_database()
    assert verdict.ok and verdict.checked == 100


# --- The hashed form is pinned: every field counts, the links are checked ---------------------------
FIXED_EVENT = {
    "sequence": 42,
    "occurred_at": "2026-12-01T09:30:00.123456Z",
    "actor_kind": "user",
    "actor_label": "alice",
    "actor_user_id": 7,
    "actor_token_id": 3,
    "action": "deployment.create",
    "object_type": "serving.deployment",
    "object_id": "12",
    "object_repr": "support-bot",
    "department_id": 1,
    "team_id": 2,
    "request_id": "req-1",
    "ip": "10.1.2.3",
    "user_agent": "Mozilla/5.0",
    "before": None,
    "after": {"replicas": 2, "name": "support-bot"},
    "prev_hash": "ab" * 32,
}
# Written out by hand: a change to what the hash covers (a field left out, renamed, reformatted) shows here.
FIXED_CANONICAL_FORM = (
    '{"action":"deployment.create","actor_kind":"user","actor_label":"alice","actor_token_id":3,'
    '"actor_user_id":7,"after":{"name":"support-bot","replicas":2},"before":null,"department_id":1,'
    '"ip":"10.1.2.3","object_id":"12","object_repr":"support-bot","object_type":"serving.deployment",'
    '"occurred_at":"2026-12-01T09:30:00.123456Z","prev_hash":"' + "ab" * 32 + '","request_id":"req-1",'
    '"sequence":42,"team_id":2,"user_agent":"Mozilla/5.0"}'
)
FIXED_HASH = "da2caa751ead793563a6c9228e229637d6267f67648b48b0b32d11088a47492e"


def test_the_hash_of_a_fixed_event_is_pinned():
    assert hashlib.sha256(FIXED_CANONICAL_FORM.encode()).hexdigest() == FIXED_HASH
    assert chain.compute_hash(FIXED_EVENT) == FIXED_HASH


def test_a_stored_event_hashes_to_the_pinned_value():
    """The same pin through the model: field names, the time format and the JSON form all count."""
    event = AuditEvent(
        **{k: v for k, v in FIXED_EVENT.items() if k != "occurred_at"},
        occurred_at=datetime(2026, 12, 1, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
    )
    assert chain.compute_hash(chain.fields_of(event)) == FIXED_HASH


# Spelled out, not taken from chain.FIELDS: a field dropped from FIELDS must fail here, not vanish from the list.
EDITS = {
    "sequence": 43,
    "occurred_at": "2026-12-01T09:30:00.123457Z",
    "actor_kind": "system",
    "actor_label": "mallory",
    "actor_user_id": 8,
    "actor_token_id": None,
    "action": "deployment.delete",
    "object_type": "serving.endpoint",
    "object_id": "13",
    "object_repr": "other-bot",
    "department_id": 9,
    "team_id": 9,
    "request_id": "req-2",
    "ip": "10.9.9.9",
    "user_agent": "curl/8",
    "before": {"replicas": 1},
    "after": {"replicas": 20, "name": "support-bot"},
    "prev_hash": "cd" * 32,
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_every_field_is_covered_by_the_hash(field):
    original = chain.compute_hash(FIXED_EVENT)
    edited = FIXED_EVENT | {field: EDITS[field]}
    assert chain.compute_hash(edited) != original
    verdict = chain.verify([edited | {"hash": original}], contiguous=False)
    assert (verdict.ok, verdict.reason) == (False, "hash does not match the event's contents")


SQL_EDITS = {
    "action": "'forged.action'",
    "actor_kind": "'user'",
    "actor_label": "'someone-else'",
    "actor_user_id": "999",
    "actor_token_id": "999",
    "ip": "'203.0.113.9'",
    "user_agent": "'forged-agent'",
    "request_id": "'forged-request'",
    "object_type": "'forged.type'",
    "object_id": "'999'",
    "object_repr": "'forged'",
    "team_id": "999",
    "department_id": "999",
    "before": "'{\"forged\": true}'",
    "occurred_at": "occurred_at - interval '1 hour'",
    "prev_hash": "repeat('0', 64)",
}


def _as_superuser(*statements) -> None:
    """What an attacker holding the database superuser could do: switch the append-only trigger off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
        for statement, params in statements:
            cursor.execute(statement, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")


@pytest.mark.django_db
@pytest.mark.parametrize("field", sorted(SQL_EDITS))
def test_an_edited_stored_field_breaks_the_chain_at_that_event(field):
    _record_some(4)
    _as_superuser((f"UPDATE audit_auditevent SET {field} = {SQL_EDITS[field]} WHERE sequence = 2", []))
    verdict = verify_database()
    assert (verdict.ok, verdict.broken_sequence) == (False, 2)


def _rehash_from(sequence: int, edit) -> None:
    """Edit one event, then recompute its hash (and, with ``edit`` applied to the first only, relink every
    event after it so each one's own hash and link hold again)."""
    rows = list(AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"))
    previous = AuditEvent.objects.filter(sequence=sequence - 1).values_list("hash", flat=True).first()
    updates = []
    for event in rows:
        if event.sequence == sequence:
            edit(event)
        if event.sequence > sequence and previous is not None:
            event.prev_hash = previous
        event.hash = chain.compute_hash(chain.fields_of(event))
        previous = event.hash
        updates.append(
            (
                "UPDATE audit_auditevent SET action = %s, actor_label = %s, ip = %s, prev_hash = %s, "
                "hash = %s WHERE sequence = %s",
                [event.action, event.actor_label, event.ip, event.prev_hash, event.hash, event.sequence],
            )
        )
    _as_superuser(*updates)


def _forge(event) -> None:
    event.action, event.actor_label, event.ip = "test.harmless", "nobody", "192.0.2.1"


@pytest.mark.django_db
def test_an_edited_and_rehashed_event_is_caught_by_the_next_events_link():
    _record_some(5)
    event = AuditEvent.objects.get(sequence=3)
    _forge(event)
    event.hash = chain.compute_hash(chain.fields_of(event))
    _as_superuser(
        (
            "UPDATE audit_auditevent SET action = %s, actor_label = %s, ip = %s, hash = %s WHERE sequence = 3",
            [event.action, event.actor_label, event.ip, event.hash],
        )
    )
    verdict = verify_database()
    assert (verdict.ok, verdict.broken_sequence, verdict.reason) == (
        False,
        4,
        "previous hash does not match the event before",
    )


def test_rows_whose_own_hashes_hold_but_do_not_link_are_refused_offline_too():
    rows = [FIXED_EVENT | {"sequence": 1, "prev_hash": chain.GENESIS_HASH}]
    rows[0]["hash"] = chain.compute_hash(rows[0])
    second = FIXED_EVENT | {"sequence": 2, "prev_hash": "cd" * 32}  # not the first row's hash
    rows.append(second | {"hash": chain.compute_hash(second)})
    verdict = chain.verify(rows, contiguous=True)
    assert (verdict.ok, verdict.broken_sequence) == (False, 2)
    assert verdict.reason == "previous hash does not match the event before"


@pytest.mark.django_db
def test_the_first_event_must_link_to_the_genesis_hash():
    _record_some(2)
    _rehash_from(1, lambda event: setattr(event, "prev_hash", "1" * 64))
    verdict = verify_database()
    assert (verdict.ok, verdict.broken_sequence) == (False, 1)


# --- Anchors: a history rewritten and rehashed to the head is still caught -----------------------------
@pytest.mark.django_db
def test_the_anchor_task_logs_the_chain_head(caplog):
    _record_some(3)
    head = AuditEvent.objects.get(sequence=3)
    with caplog.at_level(logging.INFO, logger="portfolio.audit.anchor"):
        anchor = anchor_head()
    assert (anchor["sequence"], anchor["hash"]) == (3, head.hash)
    assert f"audit-anchor sequence=3 hash={head.hash} at=" in caplog.text


# As a worker started with PORTFOLIO_LOG_LEVEL=WARNING sets logging up (``portfolio worker`` passes the level
# on as celery's --loglevel), then runs the anchor task, and a line of another logger at INFO.
_QUIET_WORKER = """
import logging
import django
django.setup()
from portfolio.celery import app
app.log.setup_logging_subsystem(loglevel="WARNING")
from portfolio.audit.tasks import anchor_head
anchor_head()
logging.getLogger("portfolio.audit.tasks").info("an ordinary info line")
"""


@pytest.mark.django_db(transaction=True)
def test_the_anchor_reaches_the_log_whatever_the_log_level():
    """At PORTFOLIO_LOG_LEVEL=WARNING the anchor, logged at INFO, vanished: the external record of the chain
    stopped without a word."""
    from django.conf import settings

    from portfolio.envparse import database_url

    _record_some(2)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portfolio.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PORTFOLIO_DATA_DIR": str(settings.DATA_DIR),
        "PORTFOLIO_LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-c", _QUIET_WORKER], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    head = AuditEvent.objects.get(sequence=2)
    assert f"INFO portfolio.audit.anchor [-] audit-anchor sequence=2 hash={head.hash} at=" in result.stderr
    assert "an ordinary info line" not in result.stderr  # the level still holds for everything else


def test_the_anchor_task_runs_on_the_beat_schedule():
    from django.conf import settings

    from portfolio.celery import app

    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "audit.anchor_head")
    assert entry["schedule"] <= 600
    app.loader.import_default_modules()
    assert "audit.anchor_head" in app.tasks


@pytest.mark.django_db
def test_a_history_rehashed_to_the_head_passes_its_own_links_but_not_an_earlier_anchor(tmp_path, caplog):
    _record_some(3)
    with caplog.at_level(logging.INFO, logger="portfolio.audit.anchor"):
        anchor_head()
    log = tmp_path / "worker.log"
    log.write_text(caplog.text)
    _record_some(2)
    call_command("audit_verify", "--anchors-from", str(log))

    _rehash_from(2, _forge)
    assert verify_database().ok  # the links alone cannot tell: everything after the edit was rehashed
    with pytest.raises(CommandError, match="anchor at sequence 3: .* rewritten"):
        call_command("audit_verify", "--anchors-from", str(log))


@pytest.mark.django_db
def test_an_anchor_log_that_cannot_be_read_is_refused_plainly(tmp_path):
    with pytest.raises(CommandError, match="--anchors-from: cannot read .*missing.log"):
        call_command("audit_verify", "--anchors-from", str(tmp_path / "missing.log"))


@pytest.mark.django_db
def test_an_export_manifests_head_is_an_anchor(org, capsys):
    from portfolio.audit.exports import build_export
    from portfolio.audit.filters import AuditFilter
    from tests.conftest import actor_for

    _record_some(3)
    manifest = build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(), fmt="jsonl").manifest
    anchor = f"{manifest['head_sequence']}:{manifest['head_hash']}"
    call_command("audit_verify", "--anchor", anchor)
    assert "1 anchors match" in capsys.readouterr().out
    _rehash_from(1, _forge)
    with pytest.raises(CommandError, match="anchor at sequence 3"):
        call_command("audit_verify", "--anchor", anchor)
    with pytest.raises(CommandError, match="not SEQUENCE:HASH"):
        call_command("audit_verify", "--anchor", "3:nothex")


@pytest.mark.django_db(transaction=True)
def test_audit_verify_reads_the_trail_through_a_cursor_inside_a_transaction():
    """Run in autocommit, the walk's server-side cursor was declared WITH HOLD, and PostgreSQL copied the whole
    trail to temporary storage before the first event was checked. psycopg declares the cursor itself, so the
    cursor Django executes the walk's query on says how it was declared."""
    _record_some(3)
    walks = []

    def spy(execute, sql, params, many, context):
        if "ORDER BY" in sql and "audit_auditevent" in sql:
            walks.append(getattr(context["cursor"].cursor, "withhold", None))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        call_command("audit_verify")
    assert walks == [False]  # a server-side cursor (only those have withhold), not held past a commit


@pytest.mark.django_db
def test_a_snapshot_holding_very_large_floats_verifies_as_stored():
    """jsonb keeps 1e+20 as the numeric 100000000000000000000 and reads it back as an integer: hashed as the
    float, every such row was reported tampered with (a false alarm, not a pass)."""
    actor = Actor.for_system("tests")
    with transaction.atomic():
        event = audit.record(
            actor, "team.update", object_type="test", object_id="1",
            after={"big": 1e20, "odd": 1.2345678901234568e17, "neg": -3e16, "small": 1e-7, "plain": 2.5},
        )  # fmt: skip
    stored = AuditEvent.objects.get(pk=event.pk).after
    assert stored == {
        "big": 10**20,
        "odd": 123456789012345680,
        "neg": -3 * 10**16,
        "small": 1e-7,
        "plain": 2.5,
    }
    assert verify_database().ok


@pytest.mark.django_db
def test_a_snapshot_holding_negative_zero_verifies_as_stored():
    """jsonb's numeric zero has no sign: -0.0 (a rollout's max_error_rate_increase, given by any engineer)
    read back as 0.0 while "-0.0" was hashed, and verification failed at that row for ever after."""
    actor = Actor.for_system("tests")
    with transaction.atomic():
        audit.record(actor, "team.update", object_type="test", object_id="1", after={"x": -0.0, "y": [-0.0]})
    _record_some(1)
    result = verify_database()
    assert result.ok, result


@pytest.mark.django_db
def test_an_events_time_never_goes_back_along_the_chain(monkeypatch):
    """A writer with its own clock (a node agent on another machine) ahead of the others wrote its row an
    hour later than the next one: a time-range export between them was signed as contiguous and then failed
    its own verification with a gap. Times are the database's now, and never before the last event's."""
    from django.utils import timezone as django_timezone

    real_now = django_timezone.now
    monkeypatch.setattr(django_timezone, "now", lambda: real_now() + timedelta(hours=1))  # a fast clock
    _record_some(1)
    monkeypatch.setattr(django_timezone, "now", real_now)
    _record_some(2)
    times = list(AuditEvent.objects.order_by("sequence").values_list("occurred_at", flat=True))
    assert times == sorted(times)
