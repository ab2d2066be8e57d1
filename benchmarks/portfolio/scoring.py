"""The portfolio benchmark's scoring (run.py runs it), each candidate through the platform: chat endpoints by
the platform's own endpoint eval runs, the base model few-shot through /v1/completions, and the cascade
(tuned 135M first, Gemma when unsure) by an eval run of the cascade endpoint, its cost and escalation rate
from its usage rows. Imported after ``django.setup()``.
"""

from __future__ import annotations

import time

from django.utils import timezone

from benchmarks.portfolio import report
from benchmarks.portfolio.platform_setup import ACTOR, say
from portfolio.accounts.models import Team
from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook
from serving import services as serving
from serving.cascade_savings import cascade_savings
from serving.gateway import usage
from serving.models import Endpoint
from training import services as training
from training.choices import JobStatus, TaskKind
from training.evals import catalogue, gateway, runs
from training.evals.models import EvalSet, Task
from training.models import DatasetVersion

SHOTS_PER_LABEL = 2
MAX_TOKENS = 8
INSTRUCTION = "Route each support ticket to one queue: billing, technical, account or shipping."
CASCADE = "bench-cascade"


def eval_set(team: Team, version: DatasetVersion) -> EvalSet:
    task = Task.objects.filter(owner_team=team, slug="ticket-routing-bench").first() or catalogue.create_task(
        actor=ACTOR,
        owner_team=team,
        name="Ticket routing (bench)",
        slug="ticket-routing-bench",
        kind=TaskKind.CLASSIFICATION,
    )
    return catalogue.add_eval_set(actor=ACTOR, task=task, dataset_version=version)


def score_chat(name: str, target: Endpoint, evals: EvalSet, note: str = "") -> report.Candidate:
    """An endpoint eval run of the platform, run here (not queued): one request at a time."""
    run = runs.start_run(
        actor=ACTOR,
        task=evals.task,
        eval_set=evals,
        endpoint=target,
        row_limit=1000,
        concurrency=1,
        max_tokens=MAX_TOKENS,
        enqueue=False,
    )
    runs.execute(run.pk)
    run.refresh_from_db()
    if run.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"eval run of {target.name} {run.status}: {run.status_detail}")
    m = run.metrics
    return report.Candidate(
        name=name,
        endpoint=target.name,
        accuracy=m.get("accuracy"),
        latency_p50_ms=m.get("latency_p50_ms"),
        cost_per_1k_requests=m.get("cost_per_1k_requests"),
        rows=run.rows_total,
        how=f"chat completions, endpoint eval run #{run.pk}",
        note=note,
    )


def shots(version: DatasetVersion) -> list[tuple[str, str]]:
    """The few-shot examples: the first two training rows of each queue."""
    train = [item["row"] for item in training.split_rows(version, "train")]
    return report.pick_shots(
        [(row["messages"][-2]["content"], row["messages"][-1]["content"]) for row in train], SHOTS_PER_LABEL
    )


def score_few_shot(name: str, target: Endpoint, evals: EvalSet, version: DatasetVersion) -> report.Candidate:
    """Few-shot through /v1/completions (the base model has no chat template), through the gateway with a
    service key of the team, scored and priced with the eval runs' own functions."""
    examples = shots(version)
    rows = runs.rows_of(evals, 1000)
    answers = []
    with gateway.client_for(evals.task.owner_team, target.name, "bench-portfolio few-shot") as client:
        for row in rows:
            prompt = report.few_shot_prompt(examples, row["messages"][-2]["content"], INSTRUCTION)
            started = time.monotonic()
            response = client.post(
                "/v1/completions",
                json={
                    "model": target.name,
                    "prompt": prompt,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "stop": ["\n"],
                },
            )
            latency = time.monotonic() - started
            if response.status_code != 200:
                raise RuntimeError(f"{target.name} answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            usage = body.get("usage") or {}
            answers.append(
                gateway.Answer(
                    text=body["choices"][0]["text"],
                    latency_s=latency,
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                )
            )
    price = PriceBook.load(kinds=[PriceKind.ENDPOINT]).at(PriceKind.ENDPOINT, target.pk, timezone.now())
    m = runs.summarise(TaskKind.CLASSIFICATION, rows, answers, price)
    return report.Candidate(
        name=name,
        endpoint=target.name,
        accuracy=m.get("accuracy"),
        latency_p50_ms=m.get("latency_p50_ms"),
        cost_per_1k_requests=m.get("cost_per_1k_requests"),
        rows=len(rows),
        how=f"/v1/completions, {len(examples)}-shot prompt ({m.get('input_tokens', 0) // max(len(rows), 1)} "
        "input tokens a request)",
    )


def few_shot_template(version: DatasetVersion) -> str:
    """The few-shot prompt Gemma is scored with, with ``{input}`` where the ticket goes: what the cascade
    asks Gemma when it escalates (the base model has no chat template)."""
    return report.few_shot_prompt(shots(version), "{input}", INSTRUCTION)


def cascade_endpoint(team: Team, small: Endpoint, large: Endpoint, version: DatasetVersion, threshold: float):
    """The cascade: the tuned 135M answers; under ``threshold`` (its answer's mean token log-probability) the
    request escalates to Gemma, asked the few-shot prompt through /v1/completions."""
    config = {
        "small": small.name,
        "large": large.name,
        "threshold": threshold,
        "large_template": few_shot_template(version),
        "large_stop": ["\n"],
    }
    found = Endpoint.objects.filter(name=CASCADE).first()
    if found is None:
        return serving.create_endpoint(
            actor=ACTOR, name=CASCADE, team=team, routes=[], kind="cascade", config=config
        )
    return serving.configure_endpoint(actor=ACTOR, endpoint=found, kind="cascade", config=config)


def score_cascade(name: str, cascade: Endpoint, evals: EvalSet) -> tuple[report.Candidate, dict]:
    """An endpoint eval run of the cascade (chat completions, as the tuned 135M is scored): its cost per 1,000
    requests is the run's own, what billing charged for every hop at its own endpoint's price (a composite
    has no price of its own); the escalation rate from its usage rows."""
    since = timezone.now()
    time.sleep(1)  # usage rows are stamped by the gateway's clock: nothing of an earlier run counts
    candidate = score_chat(name, cascade, evals, note=f"threshold {cascade.config['threshold']}")
    time.sleep(1)  # the last request's usage event is written just after its answer
    while usage.flush():  # the gateway's usage events, into PostgreSQL (as its flusher does)
        pass
    savings = cascade_savings(cascade, since)
    if savings.requests != candidate.rows:
        say(f"warning: {savings.requests} usage rows of the cascade's first hop for {candidate.rows} rows")
    per_1k = candidate.cost_per_1k_requests
    say(f"cascade escalated {savings.escalated} of {savings.requests}")
    return candidate, {
        "endpoint": cascade.name,
        "small": cascade.config["small"],
        "large": cascade.config["large"],
        "threshold": cascade.config["threshold"],
        "large_asked_with": "the few-shot prompt, through /v1/completions (Gemma has no chat template)",
        "requests": savings.requests,
        "escalated": savings.escalated,
        "escalation_rate": savings.escalation_rate,
        "cost": None if savings.cost is None else str(savings.cost),  # None: a hop not priced
        "cost_per_1k_requests": per_1k,
        # Kept small answers' tokens at Gemma's price: its few-shot prompt is longer, so this is a floor.
        "always_large_estimate": None if savings.always_large is None else str(savings.always_large),
    }
