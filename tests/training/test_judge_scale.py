"""A judge asked for a whole number from 1 (bad) to 5 that writes it as a decimal ("1.0", "3.0") is read on
that 1-5 scale: "1.0" is its worst grade (0), not a fraction's top (1). A decimal under 1 is a fraction."""

from __future__ import annotations

import pytest

from training.evals import judging


@pytest.mark.parametrize(
    ("reply", "read"),
    [("1.0", 0.0), ("1", 0.0), ("2.0", 0.25), ("3.0", 0.5), ("5.0", 1.0), ("Score: 1.0", 0.0), ("1.00", 0.0)],
)
def test_a_decimal_from_1_to_5_is_on_the_prompts_1_to_5_scale(reply, read):
    assert judging.score(reply) == pytest.approx(read)


@pytest.mark.parametrize(("reply", "read"), [("0.8", 0.8), ("0.25", 0.25), ("0", 0.0), ("0.0", 0.0)])
def test_a_decimal_under_1_is_still_a_fraction(reply, read):
    assert judging.score(reply) == pytest.approx(read)


def test_the_worst_grade_never_reads_above_the_next():
    grades = [judging.score(f"{n}.0") for n in range(1, 6)]
    assert grades == sorted(grades) and grades[0] == 0.0
