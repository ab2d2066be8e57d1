"""Distillation, stage one: a teacher endpoint answers the dataset's prompts through the gateway (with a
short-lived service key of the job's team, so the calls are metered and billed like any other), and the
answers become a new dataset version that the student is fine-tuned on in stage two."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from serving.gateway import services as key_services
from serving.models import Endpoint
from serving.services import composite
from training import ingest, services
from training.choices import DatasetKind
from training.defaults import Hyperparameters
from training.evals.gateway import KeyedClient
from training.evaluation import prompt_messages
from training.models import Dataset, DatasetVersion, FineTuneJob

SYSTEM = Actor.for_system("training.distillation")
ANSWERS_SUFFIX = "-distilled"

# A teacher call that meets a passing failure (the gateway or the teacher's replica unreachable, rate limited,
# overloaded, restarting) is tried again, a bounded number of times: failing the stage would lose every answer
# before it, each one billed. Constants, never a client's choice: each try may be a billed call.
TEACHER_TRIES = 4  # the first call and three more
TEACHER_BACKOFF_S = 1.0  # the wait before the second try, doubled before each further one
TEACHER_WAIT_CAP_S = 30.0  # the longest wait between two tries, a Retry-After included
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# Refused connections, resets, a connection dropped before the answer. Not a read timeout: the teacher
# already had the gateway's whole upstream timeout, and the gateway answers 504 before it.
TRANSIENT_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


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
    prompt, and while a call waits to be tried again (``call_teacher``): it may raise to stop the stage."""
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
            timeout=settings.GATEWAY_UPSTREAM_TIMEOUT,
            headers={"Authorization": f"Bearer {secret}"},
        ) as client:
            client.key_id, client.renewed_at = key.pk, time.monotonic()
            for index, row in enumerate(rows, start=1):
                messages = prompt_messages(row)
                if not any(str(message.get("content") or "").strip() for message in messages):
                    on_progress(index, len(rows))
                    continue  # a row that asks nothing (an answer alone): no call, nothing to learn
                response = call_teacher(
                    client,
                    endpoint.name,
                    {
                        "model": endpoint.name,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": 0,
                    },
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


def retry_delay(response: httpx.Response | None, tried: int) -> float:
    """Seconds to wait before the try after ``tried``: the answer's Retry-After (seconds or an HTTP date)
    where it gives one, else a backoff doubling from ``TEACHER_BACKOFF_S``; at most ``TEACHER_WAIT_CAP_S``."""
    delay = TEACHER_BACKOFF_S * 2 ** (tried - 1)
    given = (response.headers.get("retry-after") or "").strip() if response is not None else ""
    if given.isdigit():
        delay = float(given)
    elif given:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):  # else the backoff
            delay = parsedate_to_datetime(given).timestamp() - time.time()
    return min(max(delay, 0.0), TEACHER_WAIT_CAP_S)


def call_teacher(
    client: httpx.Client, name: str, body: dict, *, waiting: Callable[[], object] = lambda: None
) -> httpx.Response:
    """The teacher's 200 answer to one prompt. A passing failure is tried again up to ``TEACHER_TRIES`` times
    in all; any other refusal (400, 401, 403, 404...), or the last try's, raises ``ValueError`` at once.
    ``waiting`` is called before and about once a second during each wait: the trainer's heartbeat and
    cancel check, which stops the waits by raising."""
    for tried in range(1, TEACHER_TRIES + 1):
        response: httpx.Response | None = None
        try:
            response = client.post("/v1/chat/completions", json=body)
        except TRANSIENT_ERRORS as exc:
            if tried == TEACHER_TRIES:
                raise ValueError(
                    f"The gateway did not answer the teacher {name}'s call, {tried} times: "
                    f"{exc.__class__.__name__}."
                ) from None
        else:
            if response.status_code == 200:
                return response
            if response.status_code not in TRANSIENT_STATUSES or tried == TEACHER_TRIES:
                times = f" ({tried} tries)" if tried > 1 else ""
                raise ValueError(
                    f"The teacher {name} answered {response.status_code}{times}: {response.text[:300]}"
                )
        deadline = time.monotonic() + retry_delay(response, tried)
        while True:
            waiting()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 1.0))
    raise AssertionError("unreachable: the last try returns or raises")


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
