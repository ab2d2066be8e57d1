"""The usage flusher stamps its keys' last use in key order: two flushes at once, whose batches share keys,
then lock those rows in the same order. In each batch's own (stream) order, each could hold a row the other
waits for, and PostgreSQL ended one of them as a deadlock (found by review)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from serving.gateway import services as key_services
from serving.gateway import usage
from serving.gateway.models import ApiKey
from tests.conftest import actor_for
from tests.gateway.test_usage import _stream_event

pytestmark = pytest.mark.django_db


def test_a_flush_stamps_its_keys_last_use_in_key_order(org, team):
    keys = [
        key_services.create_key(actor=actor_for(org["owner"]), team=team, name=f"k{i}")[0] for i in range(3)
    ]
    at = datetime.now(UTC).replace(microsecond=0)
    for n, key in enumerate(reversed(keys)):  # the stream has them newest key first
        _stream_event(key, team, f"order-{n}", at)
    with CaptureQueriesContext(connection) as queries:
        assert usage.flush() == 3
    table = ApiKey._meta.db_table
    stamped = [
        int(found.group(1))
        for query in queries.captured_queries
        if query["sql"].startswith(f'UPDATE "{table}"')
        and (found := re.search(rf'"{table}"\."id" = (\d+)', query["sql"]))
    ]
    assert stamped == sorted(key.pk for key in keys)
    assert all(key.last_used_at == at for key in ApiKey.objects.filter(pk__in=[k.pk for k in keys]))
