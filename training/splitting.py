"""The train/eval split: deterministic, by a seeded hash of each row, stratified by group (label).

A row's place never depends on the order of the file or on the other rows' content: each row gets a
score from ``blake2b(seed, row)``, and in each group the ``k`` rows with the lowest scores go to eval.
The same rows and seed always give the same split, on any machine.
"""

from __future__ import annotations

import hashlib
import math

DEFAULT_SEED = 42
DEFAULT_EVAL_FRACTION = 0.1
MAX_EVAL_FRACTION = 0.5
MIN_ROWS_FOR_EVAL = 10  # from this many rows on, a positive fraction keeps at least one eval row


def score(seed: int, canonical_row: bytes) -> int:
    digest = hashlib.blake2b(canonical_row, digest_size=8, key=str(seed).encode()[:64]).digest()
    return int.from_bytes(digest, "big")


def eval_quotas(group_sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """How many rows of each group go to eval: about ``fraction`` of each (rounded half up), every group
    with two or more rows keeping at least one training row, and at least one eval row in all once the
    dataset has ``MIN_ROWS_FOR_EVAL`` rows."""
    quotas = {}
    for group, size in group_sizes.items():
        k = math.floor(size * fraction + 0.5)
        quotas[group] = max(0, min(k, size - 1))
    total = sum(group_sizes.values())
    if fraction > 0 and total >= MIN_ROWS_FOR_EVAL and not any(quotas.values()):
        largest = max(group_sizes, key=lambda group: (group_sizes[group], group))
        if group_sizes[largest] >= 2:
            quotas[largest] = 1
    return quotas


class Splitter:
    """Collect every row's (group, score), then ``is_eval`` decides each row by its group's cut-off."""

    def __init__(self, seed: int, fraction: float):
        self.seed = seed
        self.fraction = fraction
        self._scores: dict[str, list[int]] = {}
        self._cuts: dict[str, int] | None = None

    def add(self, group: str, canonical_row: bytes) -> None:
        self._scores.setdefault(group, []).append(score(self.seed, canonical_row))

    def finish(self) -> dict[str, int]:
        """Fix the cut-offs; return the eval quota per group."""
        quotas = eval_quotas({group: len(scores) for group, scores in self._scores.items()}, self.fraction)
        self._cuts = {}
        for group, scores in self._scores.items():
            k = quotas[group]
            # Rows scoring at or below the k-th lowest score go to eval (-1: none does).
            self._cuts[group] = sorted(scores)[k - 1] if k else -1
        self._scores = {}
        return quotas

    def is_eval(self, group: str, canonical_row: bytes) -> bool:
        if self._cuts is None:
            raise RuntimeError("call finish() before is_eval()")
        return score(self.seed, canonical_row) <= self._cuts.get(group, -1)
