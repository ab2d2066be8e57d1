"""Forcing two transactions to interleave: the first runs to a hook and waits there, the second runs until it
ends or waits on a row lock, then the first goes on. A lock that serialises them makes the second wait; a
missing one lets it act on what the first has not committed yet. Needs a transactional test
(``pytest.mark.django_db(transaction=True)``): each thread has its own connection, closed when it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection

TIMEOUT = 10.0


class Pause:
    """``hook(fn)``: ``fn`` that, in the thread ``run_paused`` starts, waits after it returned until the
    second transaction has ended or waits on a lock. In any other thread it just runs."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        self.thread: threading.Thread | None = None

    def hook(self, fn: Callable) -> Callable:
        def paused(*args, **kwargs):
            result = fn(*args, **kwargs)
            if threading.current_thread() is self.thread and not self.reached.is_set():
                self.reached.set()
                if not self.go.wait(TIMEOUT):
                    raise TimeoutError("the second transaction never ended nor waited on a lock")
            return result

        return paused


class Outcome:
    """What a call in a thread returned or raised."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None


def _start(fn: Callable, *args, **kwargs) -> tuple[threading.Thread, Outcome]:
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which asserts on it
            outcome.error = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    return thread, outcome


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0


def interleave(pause: Pause, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Outcome, Outcome]:
    """Run ``first`` to ``pause``'s hook, then ``second`` until it ends or waits on a lock, then let ``first``
    go on; both outcomes once both have ended."""
    one, first_outcome = _start(first)
    pause.thread = one
    one.start()
    try:
        if not pause.reached.wait(TIMEOUT):
            raise AssertionError(f"the first transaction never reached its hook: {first_outcome.error!r}")
        two, second_outcome = _start(second)
        two.start()
        deadline = time.monotonic() + TIMEOUT
        while two.is_alive() and not _waiting_on_a_lock():  # polls a condition: no timing assumed
            assert time.monotonic() < deadline, "the second transaction neither ended nor waited on a lock"
            time.sleep(0.01)
    finally:
        pause.go.set()
    one.join(TIMEOUT)
    two.join(TIMEOUT)
    assert not one.is_alive() and not two.is_alive(), "a transaction did not end"
    return first_outcome, second_outcome
