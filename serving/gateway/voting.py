"""The decisions of composite endpoints, as pure functions: a router's label, a cascade's confidence and
whether to escalate, a test-time-compute endpoint's vote over its samples, and a verifier's yes or no.

Contract: no I/O and nothing slower than a pass over one answer; every input came from an engine (or a
client) and may be missing, the wrong type or absurd, so each function answers something sane for any JSON.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping

LABEL = re.compile(r"[a-z0-9][a-z0-9_-]*")
ANSWER_SPACE = re.compile(r"\s+")
ANSWER_TRIM = " \t\n.!?,;:'\"`*()[]"


def label(text: object) -> str:
    """A classifier's answer as a label: its first word, lower case, without accents or punctuation
    ("Billing." and " billing\\n" are both "billing"); "" when it holds no word."""
    if not isinstance(text, str):
        return ""
    folded = unicodedata.normalize("NFKD", text[:200]).encode("ascii", "ignore").decode().lower()
    found = LABEL.search(folded)
    return found.group(0) if found else ""


def route(text: object, table: Mapping[str, str], default: str) -> tuple[str, str]:
    """(the normalised label, the endpoint it maps to: ``default`` for an unknown or empty label)."""
    found = label(text)
    return found, table.get(found, default)


def mean_logprob(choice: object) -> float | None:
    """The mean token log-probability of one choice, from chat's ``logprobs.content[].logprob`` or
    completions' ``logprobs.token_logprobs``; None when the engine sent none (or nothing usable)."""
    if not isinstance(choice, dict):
        return None
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    values: object = (
        [item.get("logprob") for item in content if isinstance(item, dict)]
        if isinstance(content, list)
        else logprobs.get("token_logprobs")
    )
    if not isinstance(values, list):
        return None
    numbers = [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not numbers:
        return None
    return sum(numbers) / len(numbers)


def escalate(confidence: float | None, threshold: float) -> bool:
    """A cascade escalates when the small answer's confidence is under the threshold, or unknown (an
    answer without log-probabilities cannot vouch for itself)."""
    return confidence is None or confidence < threshold


def answer_text(choice: object) -> str:
    """The text of a chat or completion choice ("" if it has none)."""
    if not isinstance(choice, dict):
        return ""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def normalise_answer(text: str) -> str:
    """What two samples must share to count as the same answer: case, spacing and trailing punctuation
    aside ("Paris." and " paris" agree)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return ANSWER_SPACE.sub(" ", folded).strip(ANSWER_TRIM)


def majority(choices: list) -> int:
    """Self-consistency: the index of the first sample of the most frequent normalised answer (ties go to
    the answer seen first); samples with no text (cut off, or no answer at all) do not vote unless none has
    any; 0 when there are none."""
    answers = [normalise_answer(answer_text(c)) for c in choices]
    if not answers:
        return 0
    counts = Counter(answer for answer in answers if answer) or Counter(answers)
    best = max(counts.values())
    return next(i for i, answer in enumerate(answers) if answer in counts and counts[answer] == best)


def best_of_n(choices: list) -> int:
    """Best-of-n: the index of the sample with the highest mean token log-probability (samples without any
    rank last; ties go to the first); 0 when there are none."""
    best, best_score = 0, -math.inf
    for index, choice in enumerate(choices):
        score = mean_logprob(choice)
        if score is not None and score > best_score:
            best, best_score = index, score
    return best


def agreement(choices: list, index: int) -> float:
    """The share of samples whose normalised answer is the chosen one's (for the response header)."""
    if not choices:
        return 0.0
    chosen = normalise_answer(answer_text(choices[index]))
    return sum(normalise_answer(answer_text(c)) == chosen for c in choices) / len(choices)


YES = frozenset({"yes", "y", "true", "correct", "right", "valid"})
NO = frozenset({"no", "n", "false", "incorrect", "wrong", "invalid"})


def verdict(text: object) -> bool | None:
    """A verifier's answer as a verdict: its first word yes (True) or no (False), read as labels are
    ("Yes." and " yes\\n" are yes); None for anything else (a verifier that rambles vouches for nothing)."""
    word = label(text)
    return True if word in YES else False if word in NO else None


def distinct_answers(choices: list) -> list[int]:
    """The index of the first sample of each normalised answer, in order: what a verifier is asked about
    (the same answer twice needs one verdict, and is billed once)."""
    seen: dict[str, int] = {}
    for index, choice in enumerate(choices):
        seen.setdefault(normalise_answer(answer_text(choice)), index)
    return list(seen.values())


def verified_pick(choices: list, verdicts: Mapping[int, bool | None]) -> tuple[int, bool]:
    """Best-of-n by a verifier: (the index of the first sample of the most frequent answer the verifier
    accepted, True); when it accepted none, (the majority answer's, False). ``verdicts`` maps each distinct
    answer's first index (distinct_answers) to its verdict."""
    accepted = {normalise_answer(answer_text(choices[i])) for i, ok in verdicts.items() if ok}
    if not accepted:
        return majority(choices), False
    answers = [normalise_answer(answer_text(c)) for c in choices]
    counts = Counter(a for a in answers if a in accepted)
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a in accepted and counts[a] == best), True
