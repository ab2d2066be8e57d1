"""`make bench-defaults` trains outside the platform: it must hold out the very rows the platform holds out
when the demo dataset is uploaded as `make bench-portfolio` uploads it, or its accuracy is on other rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.training import defaults as bench
from tests.training.conftest import upload
from training import services

pytestmark = pytest.mark.django_db


def _canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def _file_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


def test_the_benchmark_splits_the_demo_rows_as_an_upload_holding_out_a_quarter_does(engineer, chat_set):
    from benchmarks.portfolio import platform_setup

    assert bench.EVAL_FRACTION == platform_setup.EVAL_FRACTION
    content = bench.DATASET.read_bytes()
    version, _ = upload(engineer, chat_set, content, eval_fraction=bench.EVAL_FRACTION)
    files = services.dataset_files(version)
    train_rows, held_out = bench.split([json.loads(line) for line in content.splitlines()])
    assert len(held_out) == 20 and len(train_rows) == 60
    assert _canonical(_file_rows(files.eval)) == _canonical(held_out)
    assert _canonical(_file_rows(files.train)) == _canonical(train_rows)
