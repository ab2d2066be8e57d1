"""Stage one of a distillation, as the teacher's calls are billed: a cancel stops them at the next prompt;
a job ending from queued revokes the key a killed attempt left; a composite teacher's key may call its
hops; an answer cut at the job's max_length is refused, never trained on; and the answers never become a
version of the prompts' own dataset, nor of a dataset of another kind."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import httpx
import pytest
from django.utils import timezone

from serving.choices import EndpointKind, NodeState
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from serving.models import Endpoint, Node
from tests.training.conftest import tickets
from training import distillation, finetune, ingest, job_reaper, lora, runner, services
from training.choices import DatasetKind, JobStatus
from training.models import Dataset, DatasetVersion, FineTuneJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def teacher(team) -> Endpoint:
    return Endpoint.objects.create(name="big-teacher", owner_team=team)


@pytest.fixture
def distilling(make_job, teacher) -> FineTuneJob:
    return make_job(
        teacher_endpoint=teacher, status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now()
    )


def _teacher(monkeypatch, answer) -> list[dict]:
    """The gateway the teacher's calls reach, answering ``answer(body)``: the bodies it was sent."""
    from training.evals.gateway import KeyedClient

    sent: list[dict] = []

    def handle(request):
        sent.append(json.loads(request.content))
        return answer(sent[-1])

    transport = httpx.MockTransport(handle)
    monkeypatch.setattr(distillation, "KeyedClient", functools.partial(KeyedClient, transport=transport))
    return sent


def _answered(content="billing", finish_reason="stop") -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"message": {"content": content}, "finish_reason": finish_reason}]}
    )


def _left_key(job: FineTuneJob) -> ApiKey:
    """The key stage one made, as a trainer killed during it leaves it: active."""
    key, _secret = key_services.create_key(
        actor=distillation.SYSTEM,
        team=job.owner_team,
        name=distillation.teacher_key_name(job.pk),
        scopes=["big-teacher"],
        service=True,
    )
    return key


def test_a_distillation_cancelled_in_stage_one_asks_the_teacher_no_more(distilling, monkeypatch):
    """With no watcher to stop its process, the trainer itself stops at the next prompt."""

    def answer(body):
        if len(sent) == 2:  # asked while the second prompt was answered
            FineTuneJob.objects.filter(pk=distilling.pk).update(cancel_requested=True)
        return _answered()

    sent = _teacher(monkeypatch, answer)
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("stage two started"))
    assert runner.run(distilling.pk) == 3
    distilling.refresh_from_db()
    assert len(sent) == 2
    assert (distilling.status, distilling.status_detail) == (
        JobStatus.CANCELLED,
        "Cancelled while asking the teacher.",
    )
    assert distilling.distilled_dataset_version is None
    assert not ApiKey.objects.filter(
        name=distillation.teacher_key_name(distilling.pk), revoked_at__isnull=True
    ).exists()


def test_a_queued_distillation_cancelled_revokes_the_teacher_key_a_killed_attempt_left(
    make_job, teacher, engineer
):
    job = make_job(teacher_endpoint=teacher, attempt=1)  # requeued after its stage-one attempt was lost
    key = _left_key(job)
    finetune.cancel_job(actor=engineer, job=job)
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_a_queued_distillation_failed_on_a_lost_node_revokes_the_teacher_key_a_killed_attempt_left(
    make_job, teacher
):
    job = make_job(teacher_endpoint=teacher, attempt=1)
    key = _left_key(job)
    Node.objects.filter(pk=job.node_id).update(state=NodeState.LOST)
    assert job_reaper._fail_queued_on_lost_nodes() == 1
    job.refresh_from_db()
    key.refresh_from_db()
    assert job.status == JobStatus.FAILED and key.revoked_at is not None


def test_a_composite_teachers_key_may_call_every_endpoint_it_calls(make_job, team, monkeypatch):
    for name in ("classifier", "billing-expert", "generalist"):
        Endpoint.objects.create(name=name, owner_team=team)
    router = Endpoint.objects.create(
        name="router",
        owner_team=team,
        kind=EndpointKind.ROUTER,
        config={"classifier": "classifier", "routes": {"billing": "billing-expert"}, "default": "generalist"},
    )
    job = make_job(teacher_endpoint=router)
    scopes = []

    def answer(body):
        scopes.append(ApiKey.objects.get(name=distillation.teacher_key_name(job.pk)).scopes)
        return _answered()

    _teacher(monkeypatch, answer)
    distillation.ask_teacher(job, [{"prompt": "hi", "completion": "?"}])
    assert [sorted(s) for s in scopes] == [["billing-expert", "classifier", "generalist", "router"]]


def test_the_teacher_may_answer_up_to_the_jobs_max_length(make_job, teacher, monkeypatch):
    job = make_job(teacher_endpoint=teacher, hyperparameters={"max_length": 1024})
    sent = _teacher(monkeypatch, lambda body: _answered())
    distillation.ask_teacher(job, [{"prompt": "hi", "completion": "?"}])
    assert [body["max_tokens"] for body in sent] == [1024]


def test_an_answer_cut_at_max_length_is_left_out_and_none_whole_fails_the_job(
    distilling, monkeypatch, capsys
):
    """Answers were asked for 256 tokens and kept however they ended: cut mid-answer, the student learned to
    stop there. An answer cut at the job's max_length is left out (the log says which rows); a teacher that
    answered none whole fails the job saying so, before any training."""
    sent = _teacher(monkeypatch, lambda body: _answered("a long", "length" if len(sent) == 2 else "stop"))
    answered = distillation.ask_teacher(
        distilling, [{"prompt": f"q{i}", "completion": "?"} for i in range(3)]
    )
    assert len(sent) == 3 and len(answered) == 2
    assert "1 answers cut at 512 tokens (max_length) left out: rows 2" in capsys.readouterr().out
    sent.clear()
    _teacher(monkeypatch, lambda body: _answered("a long", "length"))
    monkeypatch.setattr(lora, "train", lambda **kwargs: pytest.fail("trained on cut answers"))
    assert runner.run(distilling.pk) == 2
    distilling.refresh_from_db()
    assert distilling.status == JobStatus.FAILED and distilling.distilled_dataset_version is None
    assert (
        "answered none of the 20 prompts whole (20 answers were cut at 512 tokens)"
        in distilling.status_detail
    )


@pytest.mark.parametrize("name", ["p" * 80, "p" * 70 + "-distilled"], ids=["long", "long-distilled"])
def test_the_answers_of_an_80_character_dataset_never_become_a_version_of_it(
    make_job, teacher, engineer, team, dataset_version, monkeypatch, name
):
    source = Dataset.objects.create(name=name, owner_team=team, kind=DatasetKind.CHAT)
    DatasetVersion.objects.filter(pk=dataset_version.pk).update(dataset=source)
    job = FineTuneJob.objects.get(pk=make_job(teacher_endpoint=teacher).pk)
    assert job.dataset_version.dataset == source
    uploaded = []

    def upload_version(*, dataset, **kwargs):  # the stand-in base has no tokenizer to ingest with
        uploaded.append(dataset)
        return SimpleNamespace(pk=0)

    monkeypatch.setattr(services, "upload_version", upload_version)
    monkeypatch.setattr(ingest, "run_here", lambda pk, actor: (None, True))
    distillation.record_answers(job, tickets(2))
    [answers] = uploaded
    assert answers != source and answers.name.endswith("-distilled") and len(answers.name) <= 80


def test_a_dataset_of_another_kind_named_as_the_answers_is_refused_before_any_call(
    distilling, engineer, team, monkeypatch
):
    services.create_dataset(
        actor=engineer, owner_team=team, name="tickets-distilled", kind=DatasetKind.CLASSIFICATION
    )
    sent = _teacher(monkeypatch, lambda body: _answered())
    with pytest.raises(ValueError, match="tickets-distilled, which holds classification rows"):
        distillation.ask_teacher(distilling, [{"prompt": "hi", "completion": "?"}])
    assert (
        sent == [] and not ApiKey.objects.filter(name=distillation.teacher_key_name(distilling.pk)).exists()
    )
    assert Dataset.objects.filter(name="tickets-distilled").count() == 1
