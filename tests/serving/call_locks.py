"""Changes to who calls whom in a team (routes, composites, a deployment's version) wait for each other under the
team's lock (``serving.services.composite.lock_calls_of``): the tests hold it from another transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import OperationalError, connection, transaction

from serving.services import composite


def each_waits_for_the_teams_call_lock(team_id: int, *changes: Callable[[], object]) -> None:
    """Each of ``changes``, made while another transaction holds the team's lock, waits for it: here past a
    short lock timeout, refused (the caller checks that nothing changed)."""
    held, release = threading.Event(), threading.Event()

    def another_change_under_way() -> None:
        try:
            with transaction.atomic():
                composite.lock_calls_of(team_id)
                held.set()
                release.wait(30)
        finally:
            connection.close()

    other = threading.Thread(target=another_change_under_way)
    other.start()
    try:
        assert held.wait(30)
        for change in changes:
            with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '200ms'")
                change()
    finally:
        release.set()
        other.join(30)
