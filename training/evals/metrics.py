"""How an endpoint's answers score, pure: nothing here calls a model or reads the database.

Answers and expected answers are compared normalised as the fine-tune's evaluation compares them
(``training.evaluation``): case, runs of whitespace, surrounding full stops and quotes do not count.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from decimal import Decimal
from typing import Any

from training import evaluation
from training.choices import TaskKind

normalise = evaluation.normalise  # one notion of "the same answer" for every eval


def accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Share of (expected, predicted) pairs that agree; no pairs: None (no score, not 0%)."""
    return sum(e == p for e, p in pairs) / len(pairs) if pairs else None


def f1_by_label(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    return evaluation.f1_by_label(list(pairs))


def macro_f1(scores: dict[str, float]) -> float | None:
    return sum(scores.values()) / len(scores) if scores else None


def exact_match(expected: Sequence[str], answers: Sequence[str]) -> float | None:
    rows = list(zip(expected, answers, strict=True))
    return sum(normalise(a) == normalise(e) for e, a in rows) / len(rows) if rows else None


def containment(expected: Sequence[str], answers: Sequence[str]) -> float | None:
    """Share of answers that contain their expected answer (an empty expected answer counts for none)."""
    rows = list(zip(expected, answers, strict=True))
    if not rows:
        return None
    return sum(evaluation.contains(normalise(a), normalise(e)) for e, a in rows) / len(rows)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linearly interpolated between the closest ranks; none: None."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cost_per_1k_requests(
    tokens: Sequence[tuple[int, int]], input_per_million: Decimal, output_per_million: Decimal
) -> Decimal | None:
    """What 1,000 requests like these cost at the endpoint's price: the mean (input, output) tokens of a
    request priced per million, times 1,000."""
    if not tokens:
        return None
    total = sum(Decimal(i) * input_per_million + Decimal(o) * output_per_million for i, o in tokens)
    return total / Decimal(1_000_000) / len(tokens) * 1000


def answer_scores(
    kind: str, expected: Sequence[str], answers: Sequence[str], *, labels: Collection[str] | None = None
) -> dict[str, Any]:
    """The scores of a task's kind, and ``quality``, the one number the leaderboard ranks: accuracy for
    classification, exact match for extraction, containment for generation. ``labels``: every label of the
    eval set (normalised) an answer may name, not only those of these rows."""
    scores: dict[str, Any] = {
        "rows": len(expected),
        "exact_match": exact_match(expected, answers),
        "contains": containment(expected, answers),
    }
    if kind == TaskKind.CLASSIFICATION:
        pairs = evaluation.label_pairs(list(expected), list(answers), labels=labels)
        scores["accuracy"] = accuracy(pairs)
        scores["f1_by_label"] = f1_by_label(pairs)
        scores["macro_f1"] = macro_f1(scores["f1_by_label"])
        scores["confusion"] = evaluation.confusion(pairs)
        scores["quality"] = scores["accuracy"]
    else:
        scores["quality"] = scores["exact_match" if kind == TaskKind.EXTRACTION else "contains"]
    return scores


def row_verdicts(
    kind: str, expected: Sequence[str], answers: Sequence[str], *, labels: Collection[str] | None = None
) -> list[bool]:
    """Each row right or wrong by the measure ``quality`` counts for the kind (a side-by-side's marks);
    ``labels`` as ``answer_scores`` takes them."""
    truths = [normalise(e) for e in expected]
    labels = set(truths) | set(labels or ())
    verdicts = []
    for truth, answer in zip(truths, (normalise(a) for a in answers), strict=True):
        if kind == TaskKind.CLASSIFICATION:
            verdicts.append(evaluation.predicted_label(answer, labels) == truth)
        elif kind == TaskKind.EXTRACTION:
            verdicts.append(answer == truth)
        else:
            verdicts.append(evaluation.contains(answer, truth))
    return verdicts


def judge_scores(scores: Sequence[float | None]) -> dict[str, Any]:
    """The mean of the judge's readable scores (0-1; None when none was readable), and how many were read
    and not."""
    read = [s for s in scores if s is not None]
    return {
        "judge_score": sum(read) / len(read) if read else None,
        "judge_scored": len(read),
        "judge_unreadable": len(scores) - len(read),
    }


def front(candidates: Sequence[tuple[Any, float | None, float | None]]) -> set:
    """The keys of the (key, quality, cost) candidates no other beats on both: none has quality at least
    as high and cost at least as low, better in one. A candidate without a quality or a cost is on no
    front (it cannot be compared) and beats none."""
    known = [(key, q, c) for key, q, c in candidates if q is not None and c is not None]
    return {
        key
        for key, q, c in known
        if not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for _, q2, c2 in known)
    }
