"""The rollout judge's sampler (serving/rollout_judge.py asks; TrainingConfig.ready registers it): questions
sampled from the eval set of the task whose production endpoint is rolling out, put to the canary, and
each answer scored by the rollout's judge endpoint on its rubric (judging.py, as eval runs score).

Why the eval set's questions and not the canary's own requests: the gateway keeps no prompt or answer text
(metadata only, see DESIGN.md), so live requests cannot be read back; questions of the task, asked at the
rate of the canary's traffic, stand in for them, and bring reference answers the judge compares with.
The canary is asked on one of its ready replicas, as the gateway would ask it (the gateway routes by the
endpoint's weights and cannot be told to pick the canary; the replica's time is billed as replica-hours);
the judge is asked through the gateway with a short-lived key of the endpoint's team, metered and billed
like any call.
"""

from __future__ import annotations

import random
import time

import httpx
from django.conf import settings

from portfolio import direct_http
from portfolio.errors import Invalid
from serving import adapter_holding, rollout_judge, rollouts
from serving.engine_keys import engine_key
from serving.models import Endpoint, Replica, Rollout
from serving.rollout_judge import JudgeUnavailable
from training import evaluation, gateway_retries
from training.evals import gateway, judging, runs
from training.evals.models import EvalSet

CANARY_MAX_TOKENS = 128  # an answer long enough to judge, short enough for a beat tick


def eval_set_of(endpoint: Endpoint) -> EvalSet | None:
    """The newest eval set of a task of the endpoint's own team whose production endpoint ``endpoint`` is,
    among those whose rows are still stored (a purged version's are gone: every sample would fail, and the
    rollout roll back however healthy its canary). Another team may name an endpoint shared with it as its
    task's production endpoint: its eval rows and their reference answers stay its own, never sent to the
    owner's canary and judge."""
    return (
        EvalSet.objects.filter(task__production_endpoint=endpoint, task__owner_team_id=endpoint.owner_team_id)
        .filter(dataset_version__artifact__isnull=False)
        .order_by("-created_at", "-id")
        .first()
    )


def check(endpoint: Endpoint) -> str | None:
    if eval_set_of(endpoint) is None:
        return (
            f"no task of {endpoint.name}'s team has it as its production endpoint and an eval set to sample "
            "questions from"
        )
    return None


def canary_answer(rollout: Rollout, messages: list[dict], pick: random.Random, timeout: float) -> str:
    """The canary's greedy answer to one question, from one of its ready replicas (for an adapter, one that
    loaded it, as the gateway routes the canary's calls: another answers 404, and the check failed with it)."""
    ready = Replica.objects.filter(Replica.serving(), deployment__name=rollout.deployment)
    if rollout.adapter:
        version = adapter_holding.attached_version(rollout.deployment, rollout.adapter)
        ready = ready.filter(adapter_holding.holding(rollout.adapter, version))
    replicas = list(ready.exclude(port=None).order_by("pk"))
    if not replicas:
        loaded = f" that loaded {rollout.adapter}" if rollout.adapter else ""
        raise JudgeUnavailable(f"the canary {rollout.target} has no ready replica{loaded} to ask")
    replica = pick.choice(replicas)
    body = {
        "model": rollout.adapter or rollout.deployment,
        "messages": messages,
        "max_tokens": CANARY_MAX_TOKENS,
        "temperature": 0,
    }
    try:
        response = httpx.post(
            f"{replica.base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {engine_key(replica.pk)}"},
            timeout=timeout,
            **direct_http.httpx_options(),  # the engine key and the question never go through a proxy
        )
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"] or "")
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        # A question the canary refuses (4xx: longer than its context, a template that rejects it) would be
        # drawn again at every check, and the rollout never judged: the next check draws others.
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
        refused = status is not None and 400 <= status < 500
        raise JudgeUnavailable(
            f"the canary {rollout.target} did not answer: {exc.__class__.__name__}"
            + (f" {status} (the next check asks other questions)" if refused else ""),
            redraw=refused,
        ) from None


class _OutOfTime(Exception):
    """The check's time ran out while a judge call waited to be tried again."""


def sample(rollout: Rollout, count: int) -> list[float | None]:
    """``count`` questions (drawn with replacement, reproducibly per rollout and check) put to the canary,
    each answer's score by the judge (None: its reply said no readable score). A question the judge refuses
    ends the sampling: JudgeUnavailable with the scores taken before, billed (rollout_judge.py)."""
    eval_set = eval_set_of(rollout.endpoint)
    rows = runs.rows_of(eval_set, runs.MAX_ROWS) if eval_set is not None else []
    if not rows:
        raise JudgeUnavailable(f"no eval set rows to sample questions from for {rollout.endpoint.name}")
    pick = random.Random(rollout_judge.seed(rollout))  # noqa: S311 - sampling, not secrets
    chosen = [rows[pick.randrange(len(rows))] for _ in range(count)]
    questions = [evaluation.prompt_messages(row) for row in chosen]
    # The check's time (rollout_judge.SAMPLING_SECONDS): the canary's answers in its first half at most, so
    # that the judge always has the second; no call outlives it.
    began = time.monotonic()
    canary_until, deadline = (
        began + rollout_judge.SAMPLING_SECONDS / 2,
        began + rollout_judge.SAMPLING_SECONDS,
    )
    answers: list[str] = []
    for question in questions:
        left = canary_until - time.monotonic()
        if left <= 0:
            break
        answers.append(canary_answer(rollout, question, pick, min(settings.GATEWAY_UPSTREAM_TIMEOUT, left)))
    label = rollouts.judge_key_name(rollout.pk)  # one a killed worker left, serving.rollouts revokes
    scores: list[float | None] = []

    def in_time() -> None:  # between a judge call's tries
        if time.monotonic() >= deadline:
            raise _OutOfTime

    try:
        with gateway.client_for(rollout.endpoint.owner_team, rollout.judge_endpoint_name, label) as client:
            for row, question, answer in zip(chosen, questions, answers, strict=False):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                reply = gateway.ask(
                    client,
                    rollout.judge_endpoint_name,
                    judging.messages(rollout.judge_rubric, question, evaluation.expected_answer(row), answer),
                    judging.JUDGE_MAX_TOKENS,
                    timeout=min(gateway_retries.client_timeout(), left),
                    waiting=in_time,
                )
                scores.append(judging.score(reply.text))
    except _OutOfTime:
        pass  # the scores so far are kept; the rest are owed (below)
    except gateway.GatewayRefused as exc:
        # The calls before were billed: their scores are kept, and the next check draws other questions.
        raise JudgeUnavailable(f"the judge did not answer: {exc}", scores=scores, redraw=True) from None
    except Invalid as exc:  # the judge unshared, or gone, since the rollout started: no key for it
        raise JudgeUnavailable(f"the judge cannot be called: {exc}") from None
    if len(scores) < count:  # the rest are owed: the next checks ask them (rollout_judge.due)
        raise JudgeUnavailable(
            f"sampling stopped after {rollout_judge.SAMPLING_SECONDS} s: {len(scores)} of {count} judged",
            scores=scores,
        )
    return scores
