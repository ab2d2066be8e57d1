"""SplitRows.at: the rows at given positions of a split, in one pass over its file. A run's sample spread
over a large eval set was read a slice a row, each seeking to the nearest of every 1,024th line and reading
on from there: 2,000 rows of a 20,000-row set read the file about 26 times over, at every run and every
rollout check that samples the judge's questions."""

from __future__ import annotations

import json
from pathlib import Path

from training import services
from training.services import ROW_STRIDE, SplitRows


def _split(tmp_path: Path, count: int) -> SplitRows:
    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"ticket {i}", "label": str(i % 4)}) + "\n" for i in range(count))
    )
    return SplitRows(path, count)


def test_rows_at_positions_are_those_a_slice_gives(tmp_path):
    rows = _split(tmp_path, 3 * ROW_STRIDE + 10)
    positions = [0, 1, 2, ROW_STRIDE - 1, ROW_STRIDE, 2 * ROW_STRIDE + 7, 3 * ROW_STRIDE + 9]
    assert rows.at(positions) == [rows[p] for p in positions]
    far = [2 * ROW_STRIDE + 5, 3 * ROW_STRIDE]  # starts at a stride's offset, not the first line
    assert rows.at(far) == [rows[p] for p in far]
    assert rows.at([]) == [] and rows.at([3 * ROW_STRIDE + 10]) == []  # past the end: nothing


def test_a_spread_sample_reads_the_file_once(tmp_path, monkeypatch):
    rows = _split(tmp_path, 20_000)
    positions = list(range(3, 20_000, 10))  # 2,000 rows spread over the set
    read: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        if self == rows.path:
            read.append(1)
        return handle

    services._offsets(rows.path)  # the stride offsets, read once a file (kept)
    monkeypatch.setattr(Path, "open", counting_open)
    got = rows.at(positions)
    assert [row["row"]["text"] for row in got] == [f"ticket {p}" for p in positions]
    assert [row["index"] for row in got] == [p + 1 for p in positions]
    assert len(read) == 1, "one pass, not one read a row"
