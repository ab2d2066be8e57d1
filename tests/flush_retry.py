"""A transactional test's flush that loses a deadlock to another process is tried again.

Django empties the tables after a transactional test with one ``TRUNCATE`` of every table, which takes an
exclusive lock on each in turn. A process a test left running (a test gateway reading its routing
fingerprint, a Celery worker, a node agent) may at that moment run one statement over several of those
tables, taking its shared locks in another order. PostgreSQL then ends one of the two with "deadlock
detected". When it ends the other process's statement, that process retries on its own; when it ends the
``TRUNCATE``, the test errors in its teardown and the next test finds the last one's rows. The flush runs in
one transaction that the failure rolled back, so running it again is safe.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import pytest
from psycopg.errors import DeadlockDetected

# A flush is tried this many times in all before its deadlock is let through.
FLUSH_TRIES = 3


def deadlocked(error: BaseException) -> bool:
    """Was ``error`` (Django's CommandError or any wrapper) caused by PostgreSQL ending a deadlock?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DeadlockDetected):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retrying_on_deadlock(teardown: Callable[..., None]) -> Callable[..., None]:
    """``teardown`` (TransactionTestCase._fixture_teardown), run again when a deadlock ended its flush."""

    @functools.wraps(teardown)
    def flush(self) -> None:
        for attempt in range(1, FLUSH_TRIES + 1):
            try:
                teardown(self)
                return
            except Exception as error:
                if attempt == FLUSH_TRIES or not deadlocked(error):
                    raise
                # In the run's warnings summary: how often this happens stays visible.
                warnings.warn(
                    pytest.PytestWarning(
                        f"the flush lost a deadlock on try {attempt} of {FLUSH_TRIES}: run again"
                    ),
                    stacklevel=2,
                )

    flush.unwrapped = teardown  # type: ignore[attr-defined]
    return flush


def install() -> None:
    """Make every transactional test's flush retry on a deadlock (once per process)."""
    from django.test import TransactionTestCase

    if not hasattr(TransactionTestCase._fixture_teardown, "unwrapped"):
        TransactionTestCase._fixture_teardown = retrying_on_deadlock(TransactionTestCase._fixture_teardown)
