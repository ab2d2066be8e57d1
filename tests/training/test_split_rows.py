"""A listing's page of a split's rows reads only that page's part of the file: ?page=999999999 is clamped to
the last page, and every click on it once read the whole split file (up to the upload limit) from its first
line. The first page past the start reads the file once; every page after reads about a thousand rows at
most, however far in."""

from __future__ import annotations

import io
import json
from pathlib import Path

from training.services import SplitRows

ROWS = 100_000


class CountedFile(io.RawIOBase):
    """A split file opened for reading that adds the bytes it reads from disk to its path's ``read``."""

    def __init__(self, path: CountedPath):
        self.path = path
        self.file = io.FileIO(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        count = self.file.readinto(buffer)
        self.path.read += count or 0
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
        super().close()


class CountedPath(type(Path())):  # type: ignore[misc]
    """A path whose files, opened as `SplitRows` opens them, count the bytes read (buffered reads included)."""

    read = 0

    def open(self, mode="r", *args, **kwargs):
        if mode != "rb":
            return super().open(mode, *args, **kwargs)
        return io.BufferedReader(CountedFile(self))


def _split(folder: Path) -> CountedPath:
    path = CountedPath(folder / "train.jsonl")
    path.write_bytes(
        b"".join(
            json.dumps({"text": f"row {i}", "label": "x" * (i % 7)}).encode() + b"\n" for i in range(ROWS)
        )
    )
    return path


def _page(rows: SplitRows, start: int) -> list[dict]:
    page = rows[start : start + 10]
    wanted = range(start, min(start + 10, ROWS))
    assert [item["row"]["text"] for item in page] == [f"row {i}" for i in wanted]
    assert [item["index"] for item in page] == [i + 1 for i in wanted]
    return page


def test_pages_at_and_around_the_known_line_offsets_have_the_right_rows(tmp_path):
    rows = SplitRows(_split(tmp_path), ROWS)
    for start in (0, 9, 1023, 1024, 1025, 2047, 2048, 50_000, ROWS - 10, ROWS - 3):
        _page(rows, start)


def test_a_page_far_into_a_large_split_reads_a_small_part_of_the_file(tmp_path):
    path = _split(tmp_path)
    size = path.stat().st_size
    rows = SplitRows(path, ROWS)
    _page(rows, 90_000)
    assert (
        path.read <= 2 * size
    )  # the first page past the start: one pass to learn where lines start, then it
    for start in (ROWS - 10, 40_000, 98_304, 1025):
        path.read = 0
        _page(rows, start)
        assert path.read < size / 50, f"a page from row {start} read {path.read} of {size} bytes"


def test_a_page_of_a_split_replaced_since_has_the_new_files_rows(tmp_path):
    """What a process learnt of a file's line offsets is not used for another file at the same path."""
    path = _split(tmp_path)
    _page(SplitRows(path, ROWS), 90_000)
    path.write_bytes(b"".join(json.dumps({"text": f"new {i}"}).encode() + b"\n" for i in range(ROWS)))
    assert SplitRows(path, ROWS)[90_000]["row"] == {"text": "new 90000"}
