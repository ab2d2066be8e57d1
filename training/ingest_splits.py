"""An upload's rows written into its train and eval files: each line checked against the splitter, measured
in tokens a batch at a time (bounded in rows and in bytes), counted per split and per label
(``training.ingest`` runs it, between validating the upload and storing the files)."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from portfolio.errors import Invalid
from training import splitting, tokens, validation
from training.choices import DatasetKind, Split

TRAIN_FILE, EVAL_FILE = "train.jsonl", "eval.jsonl"
# Share of an ingest's progress bar per pass: reading and checking, measuring and splitting, storing.
VALIDATE, MEASURE = 45, 50


class DatasetInvalid(Invalid):
    """An upload with line-numbered problems; ``report`` has them all (the first 50) with their counts."""

    code = "invalid_dataset"

    def __init__(self, report: validation.Report):
        message = f"file: {report.summary()}. No version was created."
        super().__init__(message, fields={"file": [str(error) for error in report.errors]})
        self.report = report


@dataclass
class Written:
    """What was written: the rows of each split, the stats and the rows per label."""

    train: int
    eval: int
    stats: dict
    labels: list[dict]


# Rows are measured a batch at a time: tokens.BATCH rows, or fewer that make this many bytes (2,000 rows of
# 1 MiB each, rendered and tokenized at once, would take tens of GB).
BATCH_BYTES = 32 * 2**20


def _batches(source) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for line in source:
        batch.append(line)
        size += len(line)
        if len(batch) == tokens.BATCH or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _lengths(rows: list[dict], shape: str, measure: tokens.Measure, numbers, report: validation.Report):
    """The batch's lengths. A row the base's chat template refuses (Gemma's refuses a system turn, Llama
    2's two user turns in a row) is an error on its line, as the trainer would meet it, not an internal
    error of the whole ingest."""
    from jinja2 import TemplateError

    try:
        return tokens.lengths(rows, shape, measure)
    except TemplateError as batch_error:
        refused = batch_error
    for row, number in zip(rows, numbers, strict=True):
        try:
            tokens.lengths([row], shape, measure)
        except TemplateError as exc:
            report.add_error(
                number,
                "chat_template",
                f"the chat template of {measure.version_label} refuses it: {exc}"[:500],
            )
    if report.ok:
        raise refused
    raise DatasetInvalid(report)


def write(
    report: validation.Report,
    normalized: Path,
    line_numbers: array,
    splitter: splitting.Splitter,
    measure: tokens.Measure,
    folder: Path,
    progress: Callable[..., None],
) -> Written:
    """Second pass over the normalized rows: measure them (a batch at a time), send each to train or eval."""
    counts = {Split.TRAIN: 0, Split.EVAL: 0}
    by_label: dict[str, dict[str, int]] = {}
    values: array = array("I")
    over_lines: list[int] = []
    over = 0
    limit = measure.context_length if measure.tokenizer is not None else None
    shape = report.shape or DatasetKind.CHAT
    total = max(report.rows, 1)
    with (
        normalized.open("rb") as source,
        (folder / TRAIN_FILE).open("wb") as train,
        (folder / EVAL_FILE).open("wb") as evaluation,
    ):
        index = 0
        for batch in _batches(source):
            rows = [json.loads(line) for line in batch]
            measured = _lengths(rows, shape, measure, line_numbers[index : index + len(rows)], report)
            for line, row, length in zip(batch, rows, measured, strict=True):
                group, answer = row.get("label", ""), splitting.answer_of(row)
                split = Split.EVAL if splitter.is_eval(group, line.rstrip(b"\n"), answer) else Split.TRAIN
                (evaluation if split == Split.EVAL else train).write(line)
                counts[split] += 1
                if splitter.stratified_by:  # the label's, or the answer's when the answers are classes
                    key = answer if splitter.stratified_by == "answer" else group
                    by_label.setdefault(key or "", {Split.TRAIN: 0, Split.EVAL: 0})[split] += 1
                values.append(length)
                if limit and length > limit:
                    over += 1
                    if len(over_lines) < tokens.MAX_FLAGGED:
                        over_lines.append(line_numbers[index])
                index += 1
            progress(
                VALIDATE + MEASURE * index // total,
                f"measured {index:,} of {report.rows:,} rows",
                rows_done=index,
            )
    stats = {
        "lengths": tokens.summarize(values, measure, shape, over_lines, over),
        "lines": report.lines,
        "empty_lines": report.empty_lines,
        "empty_line_numbers": report.empty_line_numbers,
        "duplicates": report.duplicates,
        "duplicate_lines": [list(pair) for pair in report.duplicate_lines],
        "stratified_by": splitter.stratified_by,
    }
    labels = [
        {"label": label, "count": sum(n.values()), "train": n[Split.TRAIN], "eval": n[Split.EVAL]}
        for label, n in sorted(by_label.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    ]
    return Written(counts[Split.TRAIN], counts[Split.EVAL], stats, labels)
