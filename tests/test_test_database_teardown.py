"""The test run drops its database cleanly: it sees the sessions other than its own that would block the drop."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from tests.conftest import other_sessions

pytestmark = pytest.mark.django_db


def test_a_session_left_open_on_the_test_database_is_seen_until_it_closes():
    extra = connection.get_new_connection(connection.get_connection_params())
    try:
        with extra.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        assert pid in [row[0] for row in other_sessions()]
    finally:
        extra.close()
    deadline = time.monotonic() + 10
    while pid in [row[0] for row in other_sessions()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid not in [row[0] for row in other_sessions()]
