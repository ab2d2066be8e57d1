"""Validating a JSONL dataset line by line: row shapes, line-numbered errors, empty lines, duplicates.

Pure and streaming: the file is read one line at a time (a line longer than the limit is skipped in
chunks, never held whole), so memory grows only with the number of rows (a 16-byte fingerprint each, to
find duplicates), never with the file. Every valid, new row is yielded in a normalized form, holding
only the fields training uses, so that the same content always hashes the same.

Row shapes, one JSON object per line:

- chat: ``{"messages": [{"role": "system|user|assistant", "content": "…"}, …]}`` ending with the
  assistant's answer;
- completion: ``{"prompt": "…", "completion": "…"}``;
- classification: ``{"text": "…", "label": "…"}`` (an integer label is kept as its string).

Every text must be storable: JSON can escape a lone UTF-16 surrogate (``"\\ud800"``) or a NUL, which are
not Unicode text (they cannot be encoded as UTF-8) or cannot be stored by PostgreSQL; both are line-numbered
errors, as are control characters in a label (a name shown and stored as such).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from training.choices import DatasetKind

MAX_LINE_BYTES = 1024 * 1024
MAX_KEPT = 50  # errors (and empty or duplicate line numbers) kept to show; all are counted
# What one upload may hold. The scan keeps a fingerprint of every row and the split a score (about 200 bytes a
# row): 5 million rows is about 1 GB on the worker, where 2 GiB of short rows would be 13 GB. A
# classification set's labels are its classes, stored with the version and drawn on its page.
MAX_ROWS = 5_000_000
MAX_LABELS = 1_000
ROLES = ("system", "user", "assistant")
BOM = b"\xef\xbb\xbf"

# Error kinds, with what people call them (the UI's and the error message's summary).
ERROR_KINDS = {
    "invalid_utf8": "not UTF-8",
    "line_too_long": "line too long",
    "invalid_json": "invalid JSON",
    "not_object": "not a JSON object",
    "unknown_shape": "unknown row shape",
    "wrong_shape": "row of another shape",
    "missing_field": "missing field",
    "wrong_type": "wrong type",
    "bad_role": "unknown role",
    "empty_content": "empty text",
    "invalid_unicode": "not valid Unicode",
    "control_character": "control character",
    "no_assistant_answer": "does not end with the assistant",
    "chat_template": "refused by the chat template",
}


@dataclass(frozen=True)
class LineError:
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"

    @property
    def kind_label(self) -> str:
        return ERROR_KINDS.get(self.kind, self.kind)


@dataclass(frozen=True)
class Row:
    """A valid row: its line in the upload, the normalized object and its canonical JSON (no newline)."""

    line: int
    data: dict
    canonical: bytes

    @property
    def label(self) -> str:
        return self.data.get("label", "")


@dataclass
class Report:
    """What a pass over the file found; ``errors`` keeps the first ``MAX_KEPT``, the counts are exact."""

    shape: str | None = None
    lines: int = 0
    rows: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_counts: Counter = field(default_factory=Counter)
    empty_lines: int = 0
    empty_line_numbers: list[int] = field(default_factory=list)
    duplicates: int = 0
    duplicate_lines: list[tuple[int, int]] = field(default_factory=list)  # (line, first seen on line)
    labels: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.error_counts

    @property
    def error_total(self) -> int:
        return sum(self.error_counts.values())

    def add_error(self, line: int, kind: str, message: str) -> None:
        self.error_counts[kind] += 1
        if len(self.errors) < MAX_KEPT:
            self.errors.append(LineError(line, kind, message))

    def count_summary(self) -> list[tuple[str, str, int]]:
        """(kind, label, count) for every kind of error found, most frequent first."""
        return [(kind, ERROR_KINDS.get(kind, kind), n) for kind, n in self.error_counts.most_common()]

    def summary(self) -> str:
        """One sentence for an error message: how many problems of which kinds."""
        kinds = ", ".join(f"{label} {n}" for _, label, n in self.count_summary())
        shown = f"; the first {MAX_KEPT} are listed" if self.error_total > MAX_KEPT else ""
        problems = "problem" if self.error_total == 1 else "problems"
        return f"{self.error_total} {problems} in {self.lines} lines ({kinds}){shown}"


class RowError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def detect_shape(obj: dict) -> str | None:
    """The shape an object's keys suggest, or None."""
    if "messages" in obj:
        return DatasetKind.CHAT
    if "prompt" in obj or "completion" in obj:
        return DatasetKind.COMPLETION
    if "text" in obj or "label" in obj:
        return DatasetKind.CLASSIFICATION
    return None


SHAPE_FIELDS: dict[str, str] = {
    DatasetKind.CHAT: "messages",
    DatasetKind.COMPLETION: "prompt/completion",
    DatasetKind.CLASSIFICATION: "text/label",
}


def _text(obj: dict, key: str, *, where: str = "", allow_empty: bool = False) -> str:
    name = f"{where}{key}"
    if key not in obj:
        raise RowError("missing_field", f"{name} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{name} must be a string, not {_json_type(value)}")
    _storable(name, value)
    if not allow_empty and not value.strip():
        raise RowError("empty_content", f"{name} is empty")
    return value


def _storable(name: str, value: str) -> None:
    """Refuse what JSON can escape but no file or database can hold: a lone surrogate, a NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RowError(
            "invalid_unicode",
            f"{name} holds a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x} at character {exc.start + 1}), "
            "which is not valid Unicode text",
        ) from None
    if "\x00" in value:
        raise RowError(
            "control_character",
            f"{name} holds a NUL character (\\u0000 at character {value.index(chr(0)) + 1})",
        )


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _chat(obj: dict) -> dict:
    if "messages" not in obj:
        raise RowError("missing_field", "messages is missing")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RowError("wrong_type", "messages must be a non-empty list of {role, content} objects")
    normalized = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]."
        if not isinstance(message, dict):
            raise RowError("wrong_type", f"messages[{index}] must be an object, not {_json_type(message)}")
        role = message.get("role")
        if role not in ROLES:
            shown = "missing" if role is None else f"{role!r}"[:40]
            raise RowError("bad_role", f"{where}role is {shown}; use system, user or assistant")
        normalized.append({"role": role, "content": _text(message, "content", where=where)})
    if normalized[-1]["role"] != "assistant":
        raise RowError(
            "no_assistant_answer",
            f"the last message must be the assistant's answer to learn from (it is {normalized[-1]['role']})",
        )
    return {"messages": normalized}


def _completion(obj: dict) -> dict:
    return {"prompt": _text(obj, "prompt", allow_empty=True), "completion": _text(obj, "completion")}


def _classification(obj: dict) -> dict:
    text = _text(obj, "text")
    if "label" not in obj:
        raise RowError("missing_field", "label is missing")
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise RowError("wrong_type", f"label must be a string or an integer, not {_json_type(label)}")
    label = str(label).strip()
    _storable("label", label)
    if not label:
        raise RowError("empty_content", "label is empty")
    control = next((c for c in label if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        raise RowError("control_character", f"label holds a control character (U+{ord(control):04X})")
    if len(label) > 100:
        raise RowError("wrong_type", "label is longer than 100 characters")
    return {"text": text, "label": label}


NORMALIZERS = {
    DatasetKind.CHAT: _chat,
    DatasetKind.COMPLETION: _completion,
    DatasetKind.CLASSIFICATION: _classification,
}


def normalize(obj: dict, shape: str) -> dict:
    """The row in ``shape`` with only the fields training uses; ``RowError`` says what is wrong."""
    suggested = detect_shape(obj)
    if suggested is not None and suggested != shape:
        raise RowError(
            "wrong_shape",
            f"a {suggested} row ({SHAPE_FIELDS[suggested]}), but this dataset holds {shape} rows "
            f"({SHAPE_FIELDS[DatasetKind(shape)]})",
        )
    return NORMALIZERS[DatasetKind(shape)](obj)


def canonical(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def read_lines(handle: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | int]]:
    """(line number, bytes without the line ending) per line; for a line over the limit, its size instead."""
    number = 0
    while True:
        raw = handle.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while not raw.endswith(b"\n"):  # skip the rest of the line, a chunk at a time
                raw = handle.readline(1024 * 1024)
                if not raw:
                    break
                size += len(raw)
            yield number, size - (1 if raw.endswith(b"\n") else 0)
            continue
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if number == 1 and line.startswith(BOM):
            line = line[len(BOM) :]
        yield number, line


def scan(
    handle: BinaryIO, report: Report, *, shape: str | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Row]:
    """Yield every valid, non-duplicate row of a JSONL stream, recording everything else in ``report``.

    ``shape`` is the dataset's declared kind; without it the first valid object decides.
    """
    report.shape = shape
    seen: dict[bytes, int] = {}
    for number, line in read_lines(handle, max_line_bytes):
        report.lines = number
        if isinstance(line, int):
            report.add_error(
                number, "line_too_long", f"the line is {line:,} bytes; at most {max_line_bytes:,}"
            )
            continue
        if not line.strip():
            report.empty_lines += 1
            if len(report.empty_line_numbers) < MAX_KEPT:
                report.empty_line_numbers.append(number)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add_error(number, "invalid_utf8", f"not valid UTF-8 (byte {exc.start + 1})")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.add_error(number, "invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            report.add_error(number, "invalid_json", "not valid JSON: nested too deeply")
            continue
        except ValueError:  # an integer of more digits than Python converts (4,300)
            report.add_error(number, "invalid_json", "not valid JSON: a number too long to read")
            continue
        if not isinstance(obj, dict):
            report.add_error(number, "not_object", f"{_json_type(obj)} where an object was expected")
            continue
        if report.shape is None:
            report.shape = detect_shape(obj)
            if report.shape is None:
                report.add_error(
                    number, "unknown_shape", "expected messages, prompt/completion or text/label fields"
                )
                continue
        try:
            data = normalize(obj, report.shape)
        except RowError as exc:
            report.add_error(number, exc.kind, exc.message)
            continue
        row = canonical(data)
        fingerprint = hashlib.blake2b(row, digest_size=16).digest()
        first = seen.get(fingerprint)
        if first is not None:
            report.duplicates += 1
            if len(report.duplicate_lines) < MAX_KEPT:
                report.duplicate_lines.append((number, first))
            continue
        if report.rows >= MAX_ROWS:
            report.add_error(
                number, "too_many_rows", f"an upload holds at most {MAX_ROWS:,} rows; split the file"
            )
            return
        if (
            report.shape == DatasetKind.CLASSIFICATION
            and data["label"] not in report.labels
            and len(report.labels) >= MAX_LABELS
        ):
            report.add_error(
                number, "too_many_labels", f"more than {MAX_LABELS:,} distinct labels (a label is a class)"
            )
            continue
        seen[fingerprint] = number
        report.rows += 1
        if report.shape == DatasetKind.CLASSIFICATION:
            report.labels[data["label"]] += 1
        yield Row(number, data, row)
