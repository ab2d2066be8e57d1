"""A transactional test's flush that deadlocks with another process's read of several tables is run again.

The CI run of stop 27 failed on exactly this: a test gateway's routing-fingerprint query (one SELECT over a
dozen tables) and pytest-django's TRUNCATE took their locks in opposite orders, PostgreSQL ended the
TRUNCATE, and the next test found the last one's rows.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from django.core.management.color import no_style
from django.db import connection
from django.test import TransactionTestCase

from portfolio.accounts.models import Department
from tests.conftest import NO_TRUNCATE_TRIGGERS
from tests.flush_retry import FLUSH_TRIES, retrying_on_deadlock

WAIT = 30.0


def _truncate_order() -> list[str]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    (statement,) = connection.ops.sql_flush(no_style(), tables)
    return re.findall(r'"([^"]+)"', statement)


def _flush_waiting_on(table: str, reader: int) -> tuple[int, list[str]] | None:
    """(pid, tables it holds exclusively) of a session other than ``reader`` waiting to lock ``table``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock' "
            "AND relation = %s::regclass AND pid <> %s",
            [table, reader],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        # Tables only (the TRUNCATE also holds their indexes, sequences and TOAST tables), in a fixed order.
        cursor.execute(
            "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.granted AND l.pid = %s AND l.mode = 'AccessExclusiveLock' AND c.relkind IN ('r', 'p') "
            "AND c.relnamespace = 'public'::regnamespace ORDER BY c.relname",
            [row[0]],
        )
        return row[0], [held for (held,) in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_loses_a_deadlock_to_a_read_of_several_tables_is_run_again():
    Department.objects.create(name="Left behind")
    with connection.cursor() as cursor:
        for table, trigger in NO_TRUNCATE_TRIGGERS:  # as the last flush of a transactional test has them
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    order = _truncate_order()
    last = order[-1]

    # The other process: a transaction that has read the table the TRUNCATE locks last.
    reader = psycopg.connect(**connection.get_connection_params())
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            TransactionTestCase()._fixture_teardown()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)
        finally:
            connection.close()

    try:
        # The reader never runs the deadlock check first: the flush is the one PostgreSQL ends.
        reader.execute("SET deadlock_timeout = '60s'")
        reader.execute(f'SELECT 1 FROM "{last}" LIMIT 1')  # noqa: S608 - a name from the schema
        flusher = threading.Thread(target=flush, daemon=True)
        flusher.start()
        deadline = time.monotonic() + WAIT
        while (waiting := _flush_waiting_on(last, reader.info.backend_pid)) is None:
            assert time.monotonic() < deadline, "the flush never queued for the reader's table"
            time.sleep(0.02)
        _, held = waiting
        held = [table for table in held if table in order]
        assert held, "the flush holds no table the reader could ask for: no deadlock to make"
        # Now the reader asks for a table the flush holds: each waits on the other, PostgreSQL ends the
        # flush, which says so and runs again once the reader is done.
        with pytest.warns(pytest.PytestWarning, match="lost a deadlock on try 1"):
            reader.execute(f'SELECT 1 FROM "{held[0]}" LIMIT 1')  # noqa: S608
            reader.commit()
            flusher.join(WAIT)
    finally:
        reader.close()
    assert not flusher.is_alive()
    assert errors == []
    assert not Department.objects.exists()


def _failing(error: BaseException, calls: list[int]):
    def teardown(self) -> None:
        calls.append(1)
        raise RuntimeError("Database couldn't be flushed") from error

    return retrying_on_deadlock(teardown)


def test_a_flush_that_fails_otherwise_is_not_run_again():
    calls: list[int] = []
    with pytest.raises(RuntimeError):
        _failing(psycopg.errors.UndefinedTable("no such table"), calls)(None)
    assert len(calls) == 1


def test_a_flush_that_keeps_deadlocking_fails_after_its_last_try():
    calls: list[int] = []
    with (
        pytest.raises(RuntimeError),
        pytest.warns(pytest.PytestWarning, match="lost a deadlock on try") as said,
    ):
        _failing(psycopg.errors.DeadlockDetected("deadlock detected"), calls)(None)
    assert len(said) == FLUSH_TRIES - 1  # a warning for each try run again, none for the last
    assert len(calls) == FLUSH_TRIES
