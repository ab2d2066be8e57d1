"""Distillation, stage one: a teacher endpoint answers the dataset's prompts through the gateway (with a
short-lived service key of the job's team, so the calls are metered and billed like any other), and the
answers become a new dataset version that the student is fine-tuned on in stage two."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from serving.gateway import services as key_services
from serving.models import Endpoint
from training import ingest, services
from training.evals.gateway import KeyedClient
from training.evaluation import prompt_messages
from training.models import Dataset, DatasetVersion, FineTuneJob

SYSTEM = Actor.for_system("training.distillation")


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


def ask_teacher(
    job: FineTuneJob,
    rows: list[dict],
    *,
    max_tokens: int = 256,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict]:
    endpoint = teacher_of(job)
    revoke_teacher_keys(job)  # an earlier attempt's, killed before it could
    with transaction.atomic():
        key, secret = key_services.create_key(
            actor=SYSTEM,
            team=job.owner_team,
            name=teacher_key_name(job.pk),
            scopes=[endpoint.name],
            service=True,
            expires_at=timezone.now() + key_services.SERVICE_KEY_LIFETIME,
        )
    answered = []
    try:
        with KeyedClient(
            base_url=settings.GATEWAY_INTERNAL_URL,
            timeout=settings.GATEWAY_UPSTREAM_TIMEOUT,
            headers={"Authorization": f"Bearer {secret}"},
        ) as client:
            client.key_id, client.renewed_at = key.pk, time.monotonic()
            for index, row in enumerate(rows, start=1):
                messages = prompt_messages(row)
                if not any(str(message.get("content") or "").strip() for message in messages):
                    on_progress(index, len(rows))
                    continue  # a row that asks nothing (an answer alone): no call, nothing to learn
                response = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": endpoint.name,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": 0,
                    },
                )
                if response.status_code != 200:
                    raise ValueError(
                        f"The teacher {endpoint.name} answered {response.status_code}: {response.text[:300]}"
                    )
                answer = response.json()["choices"][0]["message"]["content"] or ""
                if answer.strip():
                    answered.append(
                        {"messages": [*messages, {"role": "assistant", "content": answer.strip()}]}
                    )
                on_progress(index, len(rows))
    finally:
        with transaction.atomic():
            key_services.revoke_key(actor=SYSTEM, key=key)
    return answered


def record_answers(job: FineTuneJob, rows: list[dict]) -> DatasetVersion:
    """The teacher's answers as a version of the dataset ``<source>-distilled`` (lineage in its description)."""
    source, teacher = job.dataset_version, teacher_of(job)
    name = f"{source.dataset.name}-distilled"[:80]
    dataset = Dataset.objects.filter(owner_team=job.owner_team, name=name).first() or services.create_dataset(
        actor=SYSTEM,
        owner_team=job.owner_team,
        name=name,
        kind="chat",
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
