"""The rows early stopping measures on: a slice of the training rows, never the rows that score the run.

A job is scored on its dataset version's eval split (and ``make bench-defaults`` on its held-out rows).
Early stopping keeps the adapter of the lowest eval loss, so measured on those rows it would choose the
checkpoint on the very rows its accuracy is then reported on. It measures instead on about an eighth of the
training rows, held back from training: cut as the dataset's split is cut (``training.splitting``: a seeded
hash of each row, stratified by label or by answer), by the run's seed, so a resumed attempt holds back the
same rows and trains on the same ones.
"""

from __future__ import annotations

from training import splitting

FRACTION = 1 / 8
MIN_ROWS = 16  # fewer training rows cannot spare any: early stopping is off, every row trains
MIN_CLASS_ROWS = 3  # a class of this many rows gives one to the slice even when its share rounds to none


def slice_quotas(group_sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """The dataset split's quotas (``splitting.eval_quotas``), and where the rows are a few classes (at most
    ``ANSWER_CLASSES``), at least one row of every class of ``MIN_CLASS_ROWS`` rows or more: a class early
    stopping never measures could be forgotten while the others' loss still falls."""
    quotas = splitting.eval_quotas(group_sizes, fraction)
    if 2 <= len(group_sizes) <= splitting.ANSWER_CLASSES:
        for group, size in group_sizes.items():
            if size >= MIN_CLASS_ROWS:
                quotas[group] = max(quotas[group], 1)
    return quotas


def early_stopping_rows(train_rows: list[dict], seed: int, patience: int) -> tuple[list[dict], list[dict]]:
    """(the rows to train on, the rows early stopping measures on), each in the order given. None held back
    when the run does not stop early (``patience`` 0: its every training row trains) or when there are fewer
    than ``MIN_ROWS``."""
    if not patience or len(train_rows) < MIN_ROWS:
        return list(train_rows), []
    return splitting.split_rows(train_rows, seed, FRACTION, quotas=slice_quotas)
