"""Two or more eval runs of one task's eval set, side by side, row by row, the rows where the answers differ
first: read from the answers each finished run keeps per row (``EndpointEvalRun.answers``, each with its
row's position in the eval set). Read only: nothing here calls a model or writes."""

from __future__ import annotations

from dataclasses import dataclass

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.errors import Invalid, NotFound
from training.choices import JobStatus
from training.evals import metrics, sampling
from training.evals.models import EndpointEvalRun, Task

MAX_RUNS = 6


@dataclass(frozen=True)
class Cell:
    answer: str
    correct: bool | None
    judge: float | None


@dataclass(frozen=True)
class Row:
    number: int  # 1-based, in the eval set's order
    prompt: str
    expected: str
    cells: list[Cell]
    differs: bool


@dataclass(frozen=True)
class Comparison:
    runs: list[EndpointEvalRun]
    rows: list[Row]  # differing rows first, then in the eval set's order
    differing: int
    right: list[int]  # per run, the rows it got right


def _run_ids(values: list) -> list[int]:
    try:
        ids = list(dict.fromkeys(int(v) for v in values))
    except (TypeError, ValueError):
        raise Invalid("run: eval run numbers.", fields={"run": ["Eval run numbers."]}) from None
    if not 2 <= len(ids) <= MAX_RUNS:
        raise Invalid(
            f"run: choose 2 to {MAX_RUNS} runs to compare.", fields={"run": [f"Choose 2 to {MAX_RUNS} runs."]}
        )
    return ids


def compare(*, actor: Actor, task: Task, run_ids: list) -> Comparison:
    """The runs (of ``task``, visible to ``actor``, else 404) on their common eval set, row by row over the
    rows all of them answered."""
    ids = _run_ids(run_ids)
    found = {
        run.pk: run
        for run in gate.visible(actor, EndpointEvalRun)
        .filter(pk__in=ids, eval_set__task=task)
        .select_related("eval_set__dataset_version__dataset")
    }
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise NotFound(f"Eval run #{missing[0]} not found.")
    runs = [found[pk] for pk in ids]
    if len({run.eval_set_id for run in runs}) > 1:
        raise Invalid("run: runs on the same eval set only.", fields={"run": ["Runs on the same eval set."]})
    for run in runs:
        if run.status != JobStatus.SUCCEEDED or not run.answers:
            raise Invalid(
                f"run: #{run.pk} has no answers to compare (it {run.status}"
                f"{', or finished before runs kept their answers' if run.status == JobStatus.SUCCEEDED else ''}).",
                fields={"run": [f"#{run.pk} has no answers."]},
            )
    # Paired by the row each answer is for (sampling.row_of): runs of one set with other row limits scored
    # other rows, and only those all of them answered are compared.
    by_row = [{sampling.row_of(kept, place): kept for place, kept in enumerate(run.answers)} for run in runs]
    shared = sorted(set.intersection(*(set(answers) for answers in by_row)))
    rows = []
    for position in shared:
        kept = [answers[position] for answers in by_row]
        cells = [Cell(str(k.get("answer", "")), k.get("correct"), k.get("judge")) for k in kept]
        rows.append(
            Row(
                number=position + 1,
                prompt=str(kept[0].get("prompt", "")),
                expected=str(kept[0].get("expected", "")),
                cells=cells,
                differs=len({metrics.normalise(c.answer) for c in cells}) > 1,
            )
        )
    return Comparison(
        runs=runs,
        rows=sorted(rows, key=lambda row: (not row.differs, row.number)),
        differing=sum(row.differs for row in rows),
        right=[sum(bool(answers[position].get("correct")) for position in shared) for answers in by_row],
    )
