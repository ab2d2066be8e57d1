"""The audit trail is append-only in PostgreSQL itself, and its hash chain exposes any edit."""

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import chain
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.audit.verification import verify_database


def _record_some(n: int) -> list[AuditEvent]:
    actor = Actor.for_system("tests")
    with transaction.atomic():
        return [audit.record(actor, "test.event", object_type="test", object_id=str(i), after={"i": i})
                for i in range(n)]


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
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
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
                    audit.record(Actor.for_system(f"writer-{n}"), "test.concurrent", object_type="t",
                                 object_id=f"{n}-{i}")
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
    assert list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True)) == list(range(1, 101))
    verdict = verify_database()
    assert verdict.ok and verdict.checked == 100
