"""An audit event as long as what changed (a long system prompt in an endpoint's config) exports to CSV and
verifies offline: Python's csv reader refuses cells over 131,072 characters unless told otherwise."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

from portfolio.audit import offline, signing
from portfolio.audit import services as audit
from portfolio.audit.exports import build_export
from portfolio.audit.filters import AuditFilter
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
LONG = 200_000


@pytest.fixture
def long_export(org, system_actor):
    with transaction.atomic():
        audit.record(
            system_actor, "team.update", object_type="t", object_id="1", after={"prompt": "x" * LONG}
        )
    return build_export(actor=actor_for(org["auditor"]), selection=AuditFilter(), fmt="csv")


def test_an_event_longer_than_csvs_default_cell_verifies_offline(long_export, tmp_path):
    public_key = tmp_path / "audit.pub"
    public_key.write_text(signing.public_pem(settings.AUDIT_SIGNING_KEY.public_key()))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "portfolio.audit.offline", str(long_export.path)]
    result = subprocess.run(
        [*command, "--public-key-file", str(public_key)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Export verified" in result.stdout and "Traceback" not in result.stderr


def test_a_cell_over_the_verifiers_bound_is_a_problem_not_a_traceback(long_export, monkeypatch):
    limit = csv.field_size_limit()
    monkeypatch.setattr(offline, "MAX_CSV_CELL_CHARS", LONG // 2)
    verdict = offline.verify_export(long_export.path, [settings.AUDIT_SIGNING_KEY.public_key()])
    assert not verdict.ok
    assert any("not readable CSV" in problem for problem in verdict.problems), verdict.problems
    assert csv.field_size_limit() == limit  # the process-wide bound is put back
