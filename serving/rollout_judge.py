"""A rollout's judge (optional): during the watch window, a sample of the canary's answers is scored by a
judge endpoint with a rubric, and rollout_decisions.decide rolls back when the mean is under the threshold.

How many: at each check, enough that the samples judged keep up with ``judge_fraction`` of the canary's
requests so far (at least one once it answered any), at most JUDGE_PER_CHECK per check (a beat tick stays
short) and JUDGE_MAX_SAMPLES per rollout, for at most SAMPLING_SECONDS a check. Sampling runs before the rollout's rows are locked (it calls
endpoints), so a slow judge never holds up a route edit.

A judge that refuses a question (one too long for its context, say) ends the check's sampling: the scores
taken before are kept (their calls were billed), the refused question is skipped (not counted: a judge
that is down would otherwise spend the rollout's samples), and the next check draws other questions
(``seed``), not the same ones to be refused again, each call before billed again, at every check.

The judging itself (which questions, the judge's prompt, reading its reply) lives in training, which serving
cannot import: training registers a JudgeSampler in its AppConfig.ready, as it does PROMOTION_FOLLOWERS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from serving.models import Endpoint, Rollout

logger = logging.getLogger(__name__)

JUDGE_PER_CHECK = 16
JUDGE_MAX_SAMPLES = 200
CHECK_SECONDS = 30  # how often serving.step_rollouts runs (its beat schedule in portfolio/settings.py)
# The most a check spends asking the canary (its first half at most) and the judge: a slow canary or judge
# that breaches nothing held its check (and the rollout's lease) for up to JUDGE_PER_CHECK calls of the
# upstream timeout each. No call outlives it; questions not asked in time are owed, and asked by the next
# checks (``due``).
SAMPLING_SECONDS = 2 * CHECK_SECONDS


def most_samples(window_seconds: int) -> int:
    """The most canary answers a watch window of ``window_seconds`` can have judged."""
    return min(JUDGE_MAX_SAMPLES, JUDGE_PER_CHECK * max(1, window_seconds // CHECK_SECONDS))


class JudgeUnavailable(Exception):
    """The judge (or the canary it samples) did not answer this time: the check goes on with the scores taken
    before (``scores``), and the next draws other questions when this one asked the judge any (``redraw``)."""

    def __init__(self, message: str, *, scores: list[float | None] | None = None, redraw: bool = False):
        super().__init__(message)
        self.scores = list(scores or [])
        self.redraw = redraw


@dataclass(frozen=True)
class Sampled:
    """A check's judging: the scores taken (None: no readable score in the judge's reply), why it stopped
    short (``trouble``), and whether the next check must draw other questions (``redraw``)."""

    scores: list[float | None]
    trouble: str = ""
    redraw: bool = False


@dataclass(frozen=True)
class JudgeSampler:
    # Why the canaries of this endpoint cannot be judged (no eval set to sample questions from, say); None
    # when they can. Asked when a judged rollout starts.
    check: Callable[[Endpoint], str | None]
    # Ask ``count`` sampled questions (drawn by ``seed``) of the rollout's canary and the judge: each answer's
    # score from 0 to 1, None where the judge's reply said no readable score. Raises JudgeUnavailable, with
    # the scores taken before.
    sample: Callable[[Rollout, int], list[float | None]]


SAMPLERS: list[JudgeSampler] = []


def sampler() -> JudgeSampler | None:
    return SAMPLERS[0] if SAMPLERS else None


def due(rollout: Rollout, canary_requests: int) -> int:
    """How many canary answers to judge now."""
    if not rollout.judge_endpoint_name or rollout.judge_fraction <= 0:
        return 0
    asked = int(rollout.judged.get("asked", 0))
    owed = math.ceil(rollout.judge_fraction * canary_requests - 1e-9) - asked
    return max(0, min(owed, JUDGE_PER_CHECK, JUDGE_MAX_SAMPLES - asked))


def seed(rollout: Rollout) -> str:
    """The seed of a check's draw of questions: another after every check that asked the judge anything
    (``asked`` counts the scores kept, ``redrawn`` the checks a refusal cut short), so a draw refused is not
    drawn again."""
    asked, redrawn = int(rollout.judged.get("asked", 0)), int(rollout.judged.get("redrawn", 0))
    return f"{rollout.pk}:{asked}" + (f":{redrawn}" if redrawn else "")


def judge(rollout: Rollout, canary_requests: int) -> Sampled:
    """The scores of the canary answers judged now, and why there are fewer than were due."""
    count = due(rollout, canary_requests)
    if not count:
        return Sampled([])
    found = sampler()
    if found is None:
        return Sampled([], "no judge sampler is installed (the training app is not loaded)")
    if rollout.judge_endpoint_id is None:
        return Sampled([], f"the judge endpoint {rollout.judge_endpoint_name} was deleted")
    try:
        return Sampled(found.sample(rollout, count))
    except JudgeUnavailable as exc:
        return Sampled(exc.scores, str(exc), exc.redraw)
    except Exception as exc:  # raised at every check, it would hold the rollout in its canary for ever
        logger.exception("rollout #%s: judging its canary failed", rollout.pk)
        return Sampled([], f"judging failed: {exc}")
