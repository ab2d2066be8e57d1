"""The train/eval split: deterministic, by a seeded hash of each row, stratified by group.

A row's place never depends on the order of the file or on the other rows' content: each row gets a
score from ``blake2b(seed, row)``, and in each group the ``k`` rows with the lowest scores go to eval.
The same rows and seed always give the same split, on any machine.

The groups: a text/label set's labels; a chat or completion set's answers when they are classes, that is a
few short values (ticket routing written as conversations, as the demo's): at most ``ANSWER_CLASSES``
distinct answers of at most ``ANSWER_CHARS`` characters, at least three rows an answer on average. Then a
rare answer keeps training rows and the eval rows hold each answer in its share, as a label set's do.
Any other set is one group.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

DEFAULT_SEED = 42
DEFAULT_EVAL_FRACTION = 0.1
MAX_EVAL_FRACTION = 0.5
MIN_ROWS_FOR_EVAL = 10  # from this many rows on, a positive fraction keeps at least one eval row
ANSWER_CLASSES = 20  # the most distinct answers that still make a chat or completion set's classes
ANSWER_CHARS = 100  # the longest answer that can name a class (a label's longest, see validation)


def answer_of(row: dict) -> str | None:
    """A chat or completion row's answer (its last message's or its completion's text, stripped) when it
    could name a class; None for a longer one, or for a text/label row (its label is its group)."""
    if "messages" in row:
        answer = row["messages"][-1]["content"]
    elif "completion" in row:
        answer = row["completion"]
    else:
        return None
    answer = answer.strip()
    return answer if len(answer) <= ANSWER_CHARS else None


MAX_SEED = 2**63 - 1  # the version's split_seed column (a bigint)


def score(seed: int, canonical_row: bytes) -> int:
    digest = hashlib.blake2b(canonical_row, digest_size=8, key=str(seed).encode()[:64]).digest()
    return int.from_bytes(digest, "big")


def eval_quotas(group_sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """How many rows of each group go to eval: ``fraction`` of all rows (rounded half up), shared among the
    groups in proportion to their sizes (each its whole share, then one more to the largest remainders), every
    group with two or more rows keeping at least one training row, and at least one eval row in all once the
    dataset has ``MIN_ROWS_FOR_EVAL`` rows."""
    total = sum(group_sizes.values())
    exact = {group: size * fraction for group, size in group_sizes.items()}
    quotas = {group: max(0, min(math.floor(exact[group]), size - 1)) for group, size in group_sizes.items()}
    rest = math.floor(total * fraction + 0.5) - sum(quotas.values())
    for group in sorted(group_sizes, key=lambda group: (-(exact[group] - math.floor(exact[group])), group)):
        if rest <= 0:
            break
        if quotas[group] < group_sizes[group] - 1:
            quotas[group] += 1
            rest -= 1
    if fraction > 0 and total >= MIN_ROWS_FOR_EVAL and not any(quotas.values()):
        largest = max(group_sizes, key=lambda group: (group_sizes[group], group))
        if group_sizes[largest] >= 2:
            quotas[largest] = 1
    return quotas


class Splitter:
    """Collect every row's (group, score), then ``is_eval`` decides each row by its group's cut-off. A row
    without a label is also counted under its answer (``answer_of``) until the answers are found to be more
    than ``ANSWER_CLASSES``; ``finish`` then chooses the groups, named in ``stratified_by``."""

    def __init__(
        self,
        seed: int,
        fraction: float,
        quotas: Callable[[dict[str, int], float], dict[str, int]] | None = None,
    ):
        self.seed = seed
        self.fraction = fraction
        # How many rows of each group are cut off (``eval_quotas``, the dataset's split, unless told).
        self._quotas = quotas or eval_quotas
        self._scores: dict[str, list[int]] = {}
        # Unlabelled rows' scores by answer, while every answer so far may name a class (then they are
        # counted here only, and moved to the one group "" when the answers turn out not to be classes).
        self._answers: dict[str, list[int]] | None = {}
        self._cuts: dict[str, int] | None = None
        self.stratified_by = ""  # "label", "answer" or "" (one group), once finished

    def add(self, group: str, canonical_row: bytes, answer: str | None = None) -> None:
        row_score = score(self.seed, canonical_row)
        answers = self._answers
        if answers is not None:
            if not group and answer is not None and (answer in answers or len(answers) < ANSWER_CLASSES):
                answers.setdefault(answer, []).append(row_score)
                return
            self._one_group()  # a labelled row, a long answer, or one answer too many
        self._scores.setdefault(group, []).append(row_score)

    def _one_group(self) -> None:
        answers, self._answers = self._answers, None
        for scores in (answers or {}).values():
            self._scores.setdefault("", []).extend(scores)

    def finish(self) -> dict[str, int]:
        """Choose the groups and fix their cut-offs; return the eval quota per group."""
        answers = self._answers
        if answers is not None and 2 <= len(answers) <= sum(map(len, answers.values())) // 3:
            self._scores, self._answers, self.stratified_by = answers, None, "answer"
        else:
            self._one_group()
            self.stratified_by = "label" if any(self._scores) else ""
        quotas = self._quotas({group: len(scores) for group, scores in self._scores.items()}, self.fraction)
        self._cuts = {}
        for group, scores in self._scores.items():
            k = quotas[group]
            # Rows scoring at or below the k-th lowest score go to eval (-1: none does).
            self._cuts[group] = sorted(scores)[k - 1] if k else -1
        self._scores = {}
        return quotas

    def is_eval(self, group: str, canonical_row: bytes, answer: str | None = None) -> bool:
        """Whether the row goes to eval; the same ``group`` and ``answer`` as it was added with."""
        if self._cuts is None:
            raise RuntimeError("call finish() before is_eval()")
        key = (answer or "") if self.stratified_by == "answer" else group
        return score(self.seed, canonical_row) <= self._cuts.get(key, -1)


def split_rows(
    rows: list[dict],
    seed: int,
    fraction: float,
    quotas: Callable[[dict[str, int], float], dict[str, int]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(the rows kept, the rows cut off), each in the order given: parsed rows split as an upload of them
    is split (or by ``quotas``)."""
    from training.validation import canonical

    splitter = Splitter(seed, fraction, quotas=quotas)
    keyed = [(str(row.get("label", "")), canonical(row), answer_of(row), row) for row in rows]
    for group, key, answer, _ in keyed:
        splitter.add(group, key, answer)
    splitter.finish()
    kept: list[dict] = []
    cut: list[dict] = []
    for group, key, answer, row in keyed:
        (cut if splitter.is_eval(group, key, answer) else kept).append(row)
    return kept, cut
