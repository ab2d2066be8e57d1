"""An export checked offline against anchors: a history rewritten and rehashed to the head is caught with
nothing but exports and anchor lines in hand."""

import logging
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.audit import offline, signing
from portfolio.audit.anchors import Anchor, anchors_in
from portfolio.audit.exports import build_export
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.audit.tasks import anchor_head
from tests.audit.test_chain import _forge, _record_some, _rehash_from
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


def _export(org, selection=None):
    return build_export(actor=actor_for(org["auditor"]), selection=selection or AuditFilter(), fmt="jsonl")


def _keys():
    return [settings.AUDIT_SIGNING_KEY.public_key()]


def _anchor_log(path: Path, caplog) -> Path:
    """The worker's log as an auditor keeps it: every line, the anchor among them."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="portfolio.audit.anchor"):
        anchor_head()
    path.write_text(f"some other line\n{caplog.text}")
    return path


def test_an_export_of_a_history_rewritten_to_the_head_fails_against_an_earlier_anchor(
    org, tmp_path, caplog, capsys
):
    _record_some(3)
    log = _anchor_log(tmp_path / "worker.log", caplog)
    _record_some(2)
    before = offline.verify_export(_export(org).path, _keys(), anchors_in(log.read_text().splitlines()))
    assert before.ok and (before.anchors_checked, before.anchors_not_covered) == (1, [])
    assert "Anchors: 1 checked and matching, 0 not covered." in offline.report(before)

    _rehash_from(2, _forge)  # a database superuser rewrites event #2 and rehashes every event after it
    rewritten = _export(org)
    assert offline.verify_export(rewritten.path, _keys()).ok  # the signature alone cannot tell
    verdict = offline.verify_export(rewritten.path, _keys(), anchors_in(log.read_text().splitlines()))
    assert not verdict.ok
    assert verdict.problems == [
        "anchor at sequence 3: the export's event carries another hash than the anchored one, the history up "
        "to it was rewritten"
    ]

    key = tmp_path / "audit.pub"
    key.write_text(signing.public_pem(settings.AUDIT_SIGNING_KEY.public_key()))
    command = [str(rewritten.path), "--public-key-file", str(key)]
    assert offline.main([*command, "--anchors-from", str(log)]) == 1
    assert "sequence 3" in capsys.readouterr().err
    with pytest.raises(CommandError, match="anchor at sequence 3: .* rewritten"):
        call_command("audit_verify_export", *command, "--anchors-from", str(log))
    anchored = AuditEvent.objects.get(
        sequence=3
    ).hash  # the rewritten hash: an anchor taken after the rewrite
    assert offline.main([*command, "--anchor", f"3:{anchored}"]) == 0
    assert "Anchors: 1 checked and matching" in capsys.readouterr().out


def test_an_anchor_the_export_does_not_reach_is_reported_not_covered_never_passed(org, capsys):
    _record_some(4)
    event = {e.sequence: e.hash for e in AuditEvent.objects.all()}
    export = _export(org, AuditFilter(action="team.update", object_id="1"))  # only event #2 of four
    anchors = [
        Anchor(2, event[2]),  # a row of the export
        Anchor(4, event[4]),  # not a row, but the chain head its signed manifest states
        Anchor(3, event[3]),  # neither
        Anchor(9, "ab" * 32),  # after the export
        Anchor(2, event[2]),  # a quiet chain logs the same head again: counted once
    ]
    verdict = offline.verify_export(export.path, _keys(), anchors)
    assert verdict.ok, verdict.problems
    assert (verdict.anchors_checked, verdict.anchors_not_covered) == (2, [3, 9])
    assert (
        "Anchors: 2 checked and matching, 2 not covered by this export (sequence 3, 9): not checked."
        in offline.report(verdict)
    )
    verdict = offline.verify_export(export.path, _keys(), [Anchor(4, "cd" * 32)])
    assert not verdict.ok and "anchor at sequence 4" in verdict.problems[0]

    call_command("audit_verify_export", str(export.path), "--anchor", f"9:{'ab' * 32}")
    assert "0 checked and matching, 1 not covered by this export (sequence 9)" in capsys.readouterr().out


def test_anchor_options_that_cannot_be_read_are_refused_plainly(org, tmp_path, capsys):
    _record_some(1)
    export = _export(org)
    key = tmp_path / "audit.pub"
    key.write_text(signing.public_pem(settings.AUDIT_SIGNING_KEY.public_key()))
    command = [str(export.path), "--public-key-file", str(key)]
    assert offline.main([*command, "--anchor", "3:nothex"]) == 2
    assert "--anchor: '3:nothex' is not SEQUENCE:HASH" in capsys.readouterr().err
    assert offline.main([*command, "--anchors-from", str(tmp_path / "missing.log")]) == 2
    assert "--anchors-from: cannot read" in capsys.readouterr().err
    with pytest.raises(CommandError, match="--anchors-from: cannot read .*missing.log"):
        call_command("audit_verify_export", *command, "--anchors-from", str(tmp_path / "missing.log"))
