"""The billing benchmark's --reuse run, without running it: it measures again on a month generated earlier,
and its results still say when that month was generated and what its generation and rollup cost (the
rollup is outside the statement's ratio)."""

from __future__ import annotations

import json

from benchmarks.billing import run

FULL_RUN = {"month_generated_at": "2026-12-01T10:00:00+00:00", "generate_s": 674.0, "rollup_s": 195.0}


def test_a_reuse_run_carries_the_full_runs_date_and_timings_from_the_data_folders_record(
    tmp_path, settings, monkeypatch
):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(run, "RESULT", tmp_path / "billing.json")
    (tmp_path / run.MONTH_RECORD).write_text(json.dumps({"events": 1000, **FULL_RUN}))
    assert run.earlier_month(1000) == FULL_RUN


def test_without_a_record_they_come_from_the_results_file_of_a_month_of_as_many_events(
    tmp_path, settings, monkeypatch
):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(run, "RESULT", tmp_path / "billing.json")
    (tmp_path / "billing.json").write_text(json.dumps({"events": 1000, **FULL_RUN, "statement": {}}))
    assert run.earlier_month(1000) == FULL_RUN
    assert run.earlier_month(2000) == dict.fromkeys(FULL_RUN), "another month: unknown, not borrowed"
