"""Distillation, stage one: a teacher endpoint answers the dataset's prompts through the gateway (with a
short-lived service key of the job's team, so the calls are metered and billed like any other), and the
answers become a new dataset version that the student is fine-tuned on in stage two."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.errors import Conflict
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey, UsageEvent
from serving.models import Endpoint
from serving.services import composite
from training import gateway_retries, ingest, services
from training.choices import DatasetKind
from training.defaults import Hyperparameters
from training.evals.gateway import KeyedClient
from training.evaluation import prompt_messages
from training.models import Dataset, DatasetVersion, FineTuneJob

SYSTEM = Actor.for_system("training.distillation")
ANSWERS_SUFFIX = "-distilled"


def teacher_of(job: FineTuneJob) -> Endpoint:
    if job.teacher_endpoint is None:
        raise ValueError(f"Fine-tune #{job.pk} is not a distillation: it has no teacher endpoint.")
    return job.teacher_endpoint


def teacher_key_name(job_id: int) -> str:
    return f"distillation job #{job_id}"


def revoke_teacher_keys(job: FineTuneJob) -> int:
    """The job's teacher keys still active: its trainer, killed (cancelled, a failed attempt, a lost node),
    could not revoke them itself."""
    if job.teacher_endpoint_id is None:
        return 0
    return key_services.revoke_service_keys(
        actor=SYSTEM, team_id=job.owner_team_id, names=[teacher_key_name(job.pk)]
    )


def refuse_asking_again(job: FineTuneJob) -> None:
    """Refused: an attempt of a distillation whose earlier attempt began asking the teacher and was killed
    before its answers were recorded (they live only in its trainer's memory until all are asked). Asked
    again, every call would be billed again, once per attempt, unbidden: whoever started it decides. The
    mark is that attempt's key, made just before its first call and kept once revoked; an attempt killed
    before asking anything made none, and its next one asks as the first would have."""
    if job.attempt <= 1:
        return  # the first: no earlier attempt can have asked
    keys = ApiKey.objects.filter(team_id=job.owner_team_id, service=True, name=teacher_key_name(job.pk))
    if not keys.exists():
        return
    # Usage is flushed into PostgreSQL in batches: calls of the last seconds may not be counted yet.
    billed = UsageEvent.objects.filter(api_key__in=keys, status__lt=400).count()
    raise Conflict(
        f"The teacher's answers of the interrupted attempt were lost; {billed} calls were billed "
        "(metered so far). The prompts are not asked again unbidden, each call billed again: start the "
        "distillation again to ask again."
    )


def answer_tokens(job: FineTuneJob) -> int:
    """The most tokens the teacher may answer with: the job's ``max_length``, all a training row holds (the
    prompt's share of it is counted by the student's tokenizer, not known in stage one). A longer answer
    could not be trained on whole in any row."""
    return int(job.hyperparameters.get("max_length") or Hyperparameters.max_length)


def ask_teacher(
    job: FineTuneJob,
    rows: list[dict],
    *,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict]:
    """The teacher's whole answers to ``rows``' prompts. ``on_progress(done, total)`` is called after each
    prompt, and while a call waits to be tried again (``gateway_retries.post``): it may raise to stop the stage."""
    endpoint = teacher_of(job)
    answers_dataset(job)  # one the answers cannot go to is refused before the first (billed) call
    max_tokens = answer_tokens(job)
    revoke_teacher_keys(job)  # an earlier attempt's, killed before it could
    with transaction.atomic():
        key, secret = key_services.create_key(
            actor=SYSTEM,
            team=job.owner_team,
            name=teacher_key_name(job.pk),
            # A composite teacher (router, cascade, vote) calls other endpoints: the gateway checks every hop.
            scopes=[endpoint.name, *composite.hop_names(endpoint)],
            service=True,
            expires_at=timezone.now() + key_services.SERVICE_KEY_LIFETIME,
        )
    answered, cut = [], []
    try:
        with KeyedClient(
            base_url=settings.GATEWAY_INTERNAL_URL,
            timeout=gateway_retries.client_timeout(),  # the gateway's 504 first
            headers={"Authorization": f"Bearer {secret}"},
        ) as client:
            client.key_id, client.renewed_at = key.pk, time.monotonic()
            for index, row in enumerate(rows, start=1):
                messages = prompt_messages(row)
                if not any(str(message.get("content") or "").strip() for message in messages):
                    on_progress(index, len(rows))
                    continue  # a row that asks nothing (an answer alone): no call, nothing to learn
                response = gateway_retries.post(
                    client,
                    "/v1/chat/completions",
                    {
                        "model": endpoint.name,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": 0,
                    },
                    endpoint=endpoint.name,
                    who=f"The teacher {endpoint.name}",
                    # While a call waits to be tried again: nothing more answered, the trainer still alive.
                    waiting=functools.partial(on_progress, index - 1, len(rows)),
                )
                choice = response.json()["choices"][0]
                answer = choice["message"]["content"] or ""
                if choice.get("finish_reason") == "length":
                    # Cut mid-answer: the student would learn to stop there. Left out, never trained on.
                    cut.append(index)
                elif answer.strip():
                    answered.append(
                        {"messages": [*messages, {"role": "assistant", "content": answer.strip()}]}
                    )
                on_progress(index, len(rows))
    finally:
        with transaction.atomic():
            key_services.revoke_key(actor=SYSTEM, key=key)
    if cut:
        shown = ", ".join(str(index) for index in cut[:20]) + (" ..." if len(cut) > 20 else "")
        print(
            f"{len(cut)} answers cut at {max_tokens} tokens (max_length) left out: rows {shown}", flush=True
        )
    if not answered:
        raise ValueError(
            f"The teacher {endpoint.name} answered none of the {len(rows)} prompts whole ({len(cut)} answers were "
            f"cut at {max_tokens} tokens): raise hyperparameters.max_length, or ask for shorter answers."
        )
    return answered


def answers_dataset_name(source_name: str) -> str:
    """``<source>-distilled``, the source's name cut to fit 80 characters: never the source's own name (its
    answers would become a version of the prompts)."""
    name = source_name[: 80 - len(ANSWERS_SUFFIX)] + ANSWERS_SUFFIX
    if name == source_name:  # an 80-character "<...>-distilled" source, cut back to itself
        name = source_name[: 79 - len(ANSWERS_SUFFIX)] + ANSWERS_SUFFIX
    return name


def answers_dataset(job: FineTuneJob) -> Dataset | None:
    """The team's dataset the answers become a version of, if it exists; one of another kind is refused
    (chat answers would fail its ingest, after every call was billed)."""
    name = answers_dataset_name(job.dataset_version.dataset.name)
    dataset = Dataset.objects.filter(owner_team=job.owner_team, name=name).first()
    if dataset is not None and dataset.kind != DatasetKind.CHAT:
        raise ValueError(
            f"The teacher's answers go to the dataset {name}, which holds {dataset.kind} rows, not chat: "
            "rename it, or distill from a copy of the prompts under another name."
        )
    return dataset


def record_answers(job: FineTuneJob, rows: list[dict]) -> DatasetVersion:
    """The teacher's answers as a version of the dataset ``<source>-distilled`` (lineage in its description)."""
    source, teacher = job.dataset_version, teacher_of(job)
    name = answers_dataset_name(source.dataset.name)
    dataset = answers_dataset(job) or services.create_dataset(
        actor=SYSTEM,
        owner_team=job.owner_team,
        name=name,
        kind=DatasetKind.CHAT,
        description=f"Answers of the teacher endpoint {teacher.name} to the prompts of "
        f"{source.dataset.name} v{source.number} (distillation job #{job.pk}).",
    )
    content = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    upload = services.upload_version(
        actor=SYSTEM,
        dataset=dataset,
        chunks=[content],
        filename=f"teacher-{teacher.name}.jsonl",
        base_version=job.base_version,
        enqueue=False,  # this worker ingests the answers itself
    )
    version, _ = ingest.run_here(upload.pk, actor=SYSTEM)
    return version
