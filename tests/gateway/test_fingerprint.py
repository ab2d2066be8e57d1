"""The routing table is rebuilt only when something it is read from changed (serving/gateway/fingerprint.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from serving.choices import ReplicaState
from serving.gateway import fingerprint
from serving.gateway.routing import _read_snapshot, build_snapshot
from serving.models import EndpointRoute, EndpointShare, Replica

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_unchanged_table_is_not_read_again(stack):
    dep, _ = stack["deployment"]("fp-dep")
    stack["endpoint"]("fp", dep)
    first = build_snapshot()
    assert first is not None and "fp" in first.endpoints and first.fingerprint
    with CaptureQueriesContext(connection) as queries:
        assert build_snapshot(unless=first.fingerprint) is None
    assert len(queries) == 1, [q["sql"] for q in queries]


def test_every_change_the_table_shows_moves_the_fingerprint(stack):
    dep, _ = stack["deployment"]("fp-dep")
    endpoint = stack["endpoint"]("fp", dep)
    seen = {fingerprint.read()}

    def moved() -> bool:
        now = fingerprint.read()
        new = now not in seen
        seen.add(now)
        return new

    EndpointRoute.objects.filter(endpoint=endpoint).update(weight=50)
    assert moved(), "a route's weight"
    Replica.objects.filter(deployment=dep).update(state=ReplicaState.UNHEALTHY)
    assert moved(), "a replica's state"
    EndpointShare.objects.create(endpoint=endpoint, organisation=True)
    assert moved(), "a share"
    dep.version.has_chat_template = False
    dep.version.save(update_fields=["has_chat_template"])
    assert moved(), "a version's chat template"
    Replica.objects.filter(deployment=dep).delete()
    assert moved(), "a replica gone"
    assert not moved(), "nothing changed since"


def test_a_price_taking_effect_moves_the_fingerprint_without_a_write(stack, monkeypatch):
    dep, _ = stack["deployment"]("fp-dep")
    endpoint = stack["endpoint"]("fp", dep)
    now = timezone.now()
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(endpoint.pk),
        subject_name=endpoint.name,
        effective_from=now + timedelta(minutes=5),
        input_per_million=Decimal("1"),
        output_per_million=Decimal("2"),
    )
    before = fingerprint.read()
    monkeypatch.setattr(fingerprint.timezone, "now", lambda: now + timedelta(minutes=6))
    assert fingerprint.read() != before


def test_the_fingerprint_covers_every_table_the_routing_table_reads(stack):
    """Adding a table to the routing table without adding it to the fingerprint would leave gateways on a
    stale table for up to a minute: this names the table to add."""
    dep, _ = stack["deployment"]("fp-dep")
    endpoint = stack["endpoint"]("fp", dep)
    EndpointShare.objects.create(endpoint=endpoint, organisation=True)
    with CaptureQueriesContext(connection) as queries:
        _read_snapshot()
    read = {table for q in queries for table in re.findall(r'(?:FROM|JOIN) "([a-z_]+)"', q["sql"])}
    covered = {model._meta.db_table for model in fingerprint._sources()}
    assert read, "the capture saw the table's queries"
    assert read <= covered, f"read by the routing table but not in the fingerprint: {sorted(read - covered)}"


def test_a_change_committed_while_the_table_is_read_is_in_neither_or_both(stack, monkeypatch):
    """Read a moment apart, the table could show a share committed after its fingerprint was taken; once the
    share was removed, the fingerprint matched again and the gateway kept routing to an unshared endpoint
    (test_sharing's unsharing test failed now and then)."""
    import threading

    from django.db import connections

    dep, _ = stack["deployment"]("fp-dep")
    endpoint = stack["endpoint"]("fp", dep)
    read = fingerprint.read

    def read_then_share() -> str:
        seen = read()

        def share() -> None:
            EndpointShare.objects.create(endpoint=endpoint, organisation=True)
            connections.close_all()

        worker = threading.Thread(target=share)
        worker.start()
        worker.join()
        return seen

    monkeypatch.setattr(fingerprint, "read", read_then_share)
    table = build_snapshot()
    monkeypatch.setattr(fingerprint, "read", read)
    assert table is not None and not table.endpoints["fp"].shared_organisation, "the share came after"
    assert build_snapshot(unless=table.fingerprint) is not None, "and the next check sees it"
    EndpointShare.objects.filter(endpoint=endpoint).delete()
    assert build_snapshot(unless=table.fingerprint) is None, "unshared: the table read is right again"
