"""A judge endpoint's score of an answer: the conversation it is sent (the rubric, the question, the
reference answer, the answer) and the reading of its reply as a score from 0 to 1.

A reply is read leniently, as judges answer in many shapes ("4", "Score: 4/5", "**5**", "0.8", "8 out of
10", reasoning first): the first number after the reasoning (what follows the last ``</think>``, as a
reasoning model's template opens ``<think>`` in the prompt), over the scale it names (``/ N``, ``out of
N``: "8/10" is 0.8, but "/ 5" is the 1-5 scale the prompt asks for, so "4/5" is 0.75 as "4" is, and "0/5"
is 0), else a number 1-5 on that 1-5 scale ((n - 1) / 4: "4" is 0.75, "1.0" is 0 as "1" is), else a
decimal fraction under 1 as it is ("0.8", "0"). Ranges ("1-5", "1–5", "1 to 5") are not scores. Anything
else (no number, 7 with no scale, a negative, more than its scale, reasoning cut off before its
``</think>``) is unreadable: None, counted by the run, never a failure.
"""

from __future__ import annotations

import re

MAX_RUBRIC = 2000
JUDGE_MAX_TOKENS = 32
# Texts put into the judge's prompt are cut: a long answer costs the judge's tokens, not its verdict.
MAX_PROMPT_PART = 2000
DEFAULT_RUBRIC = "Is the answer correct and does it say what the reference answer says?"

_THINK_END = re.compile(r"</think>", re.IGNORECASE)
_THINK_START = re.compile(r"<think>", re.IGNORECASE)
# A range ("1-5", "1–5", "1—5", "1 to 5"), removed first: neither end is a score. One after "/" is a scale's.
_RANGE = re.compile(r"(?<![\w./])\d+(?:\.\d+)?\s*(?:-|–|—|to)\s*\d+(?:\.\d+)?(?!\w)", re.IGNORECASE)
# A number (not part of a word or another number, not a negative; "4." ends a sentence), and the scale it
# is out of, if said.
_SCORE = re.compile(
    r"(?<![\w.\-])(\d+(?:\.\d+)?)(?!\d)(?!\.\d)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)


def messages(rubric: str, question: list[dict], expected: str, answer: str) -> list[dict]:
    """The judge's conversation for one row: instructions with the rubric, then the row to score."""
    asked = "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in question)
    return [
        {
            "role": "system",
            "content": (
                "You grade answers. Criteria: "
                + (rubric.strip() or DEFAULT_RUBRIC)[:MAX_RUBRIC]
                + "\nReply with one whole number from 1 (bad) to 5 (excellent), and nothing else."
            ),
        },
        {
            "role": "user",
            "content": (
                f"Question:\n{asked[:MAX_PROMPT_PART]}\n\nReference answer:\n{expected[:MAX_PROMPT_PART]}\n\n"
                f"Answer to grade:\n{answer[:MAX_PROMPT_PART]}\n\nScore (1-5):"
            ),
        },
    ]


def score(reply: str) -> float | None:
    """The judge's reply as a score from 0 to 1, or None when it says no readable score."""
    # Only the verdict after the reasoning counts: its numbers are the facts it weighed, not the score.
    text = _THINK_END.split(reply or "")[-1]
    if _THINK_START.search(text):
        return None  # cut off while still reasoning
    found = _SCORE.search(_RANGE.sub(" ", text[:500]))
    if found is None:
        return None
    literal, scale = found.group(1), found.group(2)
    value = float(literal)
    if scale is not None:
        out_of = float(scale)
        if out_of == 5 and value <= 5:
            # The prompt's 1-5 scale, so that "4/5" and "4" from one judge are one score.
            return max(value - 1, 0) / 4
        return value / out_of if out_of > 0 and value <= out_of else None
    # The prompt's 1-5 scale first: "1.0" is its worst grade, as "2.0" is 0.25, never a fraction's top.
    if 1 <= value <= 5:
        return (value - 1) / 4
    if "." in literal and value < 1 or value == 0:
        return value  # a fraction: "0.8", "0"
    return None
