"""Which rows of an eval set a run scores, when it scores fewer than the set holds.

A run of 200 rows of a 2,000-row set scored its first 200 until 2026-12-07: on a set written label by label
(every billing ticket, then every shipping one) that is one or two labels, and an accuracy of nothing the
task asks. The rows are now spread over the whole set: the ``limit`` positions with the smallest seeded hash,
the seed the eval set's, so every run of one set with one limit scores the same rows, and a longer run's
rows include a shorter one's. A set that fits the limit is scored whole, in its order, as before.

A row is known by its position in the set (``answer_rows`` keeps it as ``row``; answers kept before then
have none and were the set's first rows, so their position is their place in the list): the side-by-side
pairs answers by it.
"""

from __future__ import annotations

import functools
import hashlib
import heapq


def positions(total: int, limit: int, seed: int) -> list[int]:
    """The positions (0-based, ascending) of the rows a run of ``limit`` rows scores in a set of ``total``."""
    if total <= limit:
        return list(range(total))
    return list(_spread(total, limit, seed))


@functools.lru_cache(maxsize=32)  # a rollout's every check draws from its set's rows: hashed once per process
def _spread(total: int, limit: int, seed: int) -> tuple[int, ...]:
    salt = f"eval-set:{seed}:".encode()

    def rank(position: int) -> bytes:
        return hashlib.blake2b(salt + str(position).encode(), digest_size=8).digest()

    return tuple(sorted(heapq.nsmallest(limit, range(total), key=rank)))


def row_of(answer: dict, place: int) -> int:
    """The position in its eval set of the row a kept answer is for (``place``: its place in the run's list)."""
    row = answer.get("row")
    return row if isinstance(row, int) and not isinstance(row, bool) else place
