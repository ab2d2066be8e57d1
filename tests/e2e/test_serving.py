"""Serving end to end with real processes: a Celery node agent starts vLLM (CPU) serving the imported
SmolLM2 from the artifact store; an adapter is hot-loaded into the running replica and answers under its
own name; every engine path refuses a caller without the replica's key; `kill -9` of the engine is followed
by an automatic restart. One engine start per run (~1 min on two cores), plus the restart."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from portfolio.registry import services as registry_services
from portfolio.registry.artifacts import materialize_version
from portfolio.registry.choices import Source, VersionStatus
from serving import agent, processes, reconcile, services
from serving.choices import DeploymentStatus, ReplicaState
from serving.models import Node, Replica
from tests.conftest import actor_for
from tests.e2e.agent import (
    ENGINE_READY_TIMEOUT,
    NODE,
    deploy_demo_model,
    start_agent,
    stop_agent,
    wait,
    wait_until_ready,
)
from tests.e2e.lora import make_adapter
from tests.registry.conftest import import_here

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _engine_chat(replica: Replica, body: dict) -> urllib.request.Request:
    """A chat completion sent straight to the replica's engine, with its key."""
    return urllib.request.Request(
        f"{replica.base_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {agent.engine_key(replica.pk)}",
            "Content-Type": "application/json",
        },
    )


def _chat(replica: Replica, model: str, prompt: str) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "temperature": 0,
    }
    with urllib.request.urlopen(_engine_chat(replica, body), timeout=120) as response:
        return json.loads(response.read())


def _stream_long(replica: Replica, tokens: int, got: dict, begun: threading.Event) -> None:
    """A streamed answer of exactly ``tokens`` tokens (end of sequence ignored), read to its end into ``got``."""
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with urllib.request.urlopen(_engine_chat(replica, body), timeout=300) as response:
            for line in response:
                begun.set()
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    got["finish"] = choice.get("finish_reason") or got.get("finish")
                if chunk.get("usage"):
                    got["tokens"] = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # the engine stopped under the stream: what the test reports
        got["error"] = repr(exc)
    finally:
        begun.set()


def _models(replica: Replica) -> set[str]:
    request = urllib.request.Request(
        f"{replica.base_url}/v1/models", headers={"Authorization": f"Bearer {agent.engine_key(replica.pk)}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return {m["id"] for m in json.loads(response.read())["data"]}


def _engine_status(
    replica: Replica, method: str, path: str, body: dict | None = None, key: str | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(
        f"{replica.base_url}{path}",
        method=method,
        headers=headers,
        data=json.dumps(body).encode() if body is not None else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _every_engine_path_needs_the_key(replica: Replica) -> None:
    """The paths vLLM's own key check leaves open are refused without the replica's key, and answer with it."""
    key = agent.engine_key(replica.pk)
    invocation = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    calls = [
        ("POST", "/invocations", invocation),
        ("POST", "/tokenize", {"model": "smol", "prompt": "The capital of France"}),
        ("POST", "/detokenize", {"model": "smol", "tokens": [504, 3575]}),
        ("GET", "/metrics", None),
        ("GET", "/health", None),
        ("GET", "/v1/models", None),
    ]
    for method, path, body in calls:
        for wrong in (None, "not-the-key", agent.engine_key(replica.pk + 1)):
            status, answer = _engine_status(replica, method, path, body, wrong)
            assert status == 401, f"{method} {path} answered {status} with key {wrong!r}: {answer[:200]!r}"
        status, answer = _engine_status(replica, method, path, body, key)
        assert status == 200, f"{method} {path} answered {status} with the key: {answer[:300]!r}"
    assert b"vllm:" in _engine_status(replica, "GET", "/metrics", key=key)[1]
    assert json.loads(_engine_status(replica, "POST", "/tokenize", calls[1][2], key)[1])["tokens"]
    assert json.loads(_engine_status(replica, "POST", "/invocations", invocation, key)[1])["choices"]


def _gateway_round_trip(admin, team, tmp_path, then=None) -> None:
    import httpx
    import openai

    from serving.gateway import services as key_services
    from serving.gateway import usage
    from serving.gateway.models import UsageEvent
    from tests.gateway.process import start_gateway, stop_gateway

    services.create_endpoint(actor=admin, name="support", team=team, routes=[{"deployment": "smol"}])
    services.create_endpoint(
        actor=admin, name="support-ft", team=team, routes=[{"deployment": "smol", "adapter": "smol-support"}]
    )
    _, secret = key_services.create_key(
        actor=admin, team=team, name="e2e", rpm_limit=600, monthly_token_budget=1_000_000
    )
    log = tmp_path / "gateway.log"
    gateway, base = start_gateway(log)
    try:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)
        wait(
            "the gateway to route to the endpoints",
            lambda: {"support", "support-ft"} <= {m.id for m in sdk.models.list()},
            30,
            [log],
        )
        answer = sdk.chat.completions.create(
            model="support",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
        assert answer.model == "support" and answer.choices[0].message.content
        chunks = list(
            sdk.chat.completions.create(
                model="support-ft",
                messages=[{"role": "user", "content": "I was charged twice"}],
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        final = [c for c in chunks if c.usage][-1].usage
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={
                "model": "support",
                "stream": True,
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "Write a long story."}],
            },
            timeout=60,
        ) as cut:
            for number, _ in enumerate(cut.iter_bytes(), start=1):
                if number >= 3:
                    break
        time.sleep(2)
        wait(
            "the usage events to be flushed",
            lambda: usage.flush() == 0 and UsageEvent.objects.count() >= 3,
            30,
            [log],
        )
        events = list(UsageEvent.objects.order_by("at"))
        assert (events[0].endpoint, events[0].input_tokens, events[0].output_tokens) == (
            "support",
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
        )
        assert (events[1].endpoint, events[1].adapter, events[1].input_tokens, events[1].output_tokens) == (
            "support-ft",
            "smol-support",
            final.prompt_tokens,
            final.completion_tokens,
        )
        assert events[2].status == 499 and 0 < events[2].output_tokens < 200
        if then is not None:
            then(base)
    finally:
        stop_gateway(gateway)


def _distillation_with_the_endpoint_as_teacher(engineer, team, student, pool) -> None:
    from serving.gateway.models import ApiKey, UsageEvent
    from serving.models import Endpoint
    from training import finetune, ingest
    from training import services as datasets
    from training.choices import JobStatus
    from training.tasks import run_job

    prompts = datasets.create_dataset(actor=engineer, owner_team=team, name="support-prompts", kind="chat")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Customer message {i}: where is my parcel?"},
                {"role": "assistant", "content": "unused"},
            ]
        }
        for i in range(12)
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    pending = datasets.upload_version(
        actor=engineer, dataset=prompts, chunks=[content], filename="prompts.jsonl", enqueue=False
    )
    version, _ = ingest.run_here(pending.pk)  # what the control worker does with the upload
    metered_before = UsageEvent.objects.count()
    from portfolio.registry import services as registry_services

    target = registry_services.create_model(actor=engineer, name="support-distilled", owner_team=team)
    # The test runs the node task itself (below), so the job is not also queued for the running agent.
    from unittest import mock

    with mock.patch.object(finetune, "enqueue"):
        job = finetune.start_distillation(
            actor=engineer,
            teacher=Endpoint.objects.get(name="support"),
            prompts=version,
            student=student,
            pool=pool,
            hyperparameters={"epochs": 1},
            target_model=target,
        )
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, f"{job.status_detail}\n{job.log_tail}"
    assert job.distilled_dataset_version.dataset.name == "support-prompts-distilled"
    assert (
        job.output_version.source == "distillation"
        and job.output_version.metrics["teacher_endpoint"] == "support"
    )
    service_key = ApiKey.objects.get(name=f"distillation job #{job.pk}")
    assert service_key.service and service_key.revoked_at is not None, (
        "the job's key is revoked when it is done"
    )
    from serving.gateway import usage

    usage.flush()
    assert UsageEvent.objects.filter(api_key=service_key).count() == 12, "every teacher call is metered"
    assert UsageEvent.objects.count() == metered_before + 12

    # The eval runs: the student's base is served by the running replica and is timed there (vLLM's own
    # token counts); the new adapter is not deployed yet, and its run says so.
    from training.models import EvalRun
    from training.serving_speed import SAMPLE_REQUESTS

    served = EvalRun.objects.get(job=job, version=student).metrics["serving"]
    assert (served["deployed"], served["deployment"], served["model"]) == (True, "smol", "smol"), served
    assert served["requests"] == SAMPLE_REQUESTS and served["completion_tokens"] > 0
    assert 0 < served["latency_p50_ms"] < 60_000 and served["tokens_per_second"] > 0
    print(
        f"serving speed of {student.label} on replica #{served['replica']}: p50 {served['latency_p50_ms']} ms, "
        f"{served['tokens_per_second']} tokens/s over {served['requests']} requests"
    )
    assert EvalRun.objects.get(job=job, version=job.output_version).metrics["serving"]["deployed"] is False


def test_node_agent_serves_hot_loads_an_adapter_and_restarts_a_killed_engine(
    org, node_agent, settings, tmp_path
):
    agents, agent_log = node_agent
    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    # The demo base model, imported for real from its GGUF, and one replica of it on the node agent.
    deployment = deploy_demo_model(
        admin,
        settings,
        tmp_path,
        agent_log,
        {"max_model_len": 1024, "enable_lora": True, "max_loras": 2, "max_lora_rank": 8},
    )
    team, base = deployment.owner_team, deployment.version
    node = Node.objects.get(name=NODE)
    assert node.cpu_cores >= 1 and node.memory_bytes > 0
    replica = wait_until_ready(deployment, tmp_path, agent_log)
    answer = _chat(replica, "smol", "What is the capital of France?")
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    # Only the key holders (the gateway, this agent) reach the engine, on any path.
    _every_engine_path_needs_the_key(replica)

    # An adapter of the base, registered through the importer, hot-loaded without a restart.
    adapter_dir = make_adapter(materialize_version(base), settings.IMPORT_ROOTS[0] / "support-adapter")
    model = registry_services.create_model(actor=engineer, name="support-router", owner_team=team)
    adapter = import_here(engineer, model, Source.LOCAL, str(adapter_dir), base_version=base)
    assert adapter.status == VersionStatus.READY, adapter.status_detail
    services.add_adapter(actor=admin, deployment=deployment, adapter=adapter, name="smol-support")
    wait("the adapter to be hot-loaded", lambda: "smol-support" in _models(replica), 120, [agent_log])
    assert _chat(replica, "smol-support", "I was charged twice")["model"] == "smol-support"
    replica.refresh_from_db()
    assert replica.restarts == 0 and replica.state == ReplicaState.READY, (
        "hot-load must not restart the engine"
    )
    pid = replica.pid

    # The agent restarts (an upgrade, a crash of the worker): the engine keeps running and is adopted.
    stop_agent(agents[0])
    assert processes.find(pid, replica.pk), "the engine outlives its agent"
    agents.append(start_agent(tmp_path, agent_log))
    beat = Node.objects.get(name=NODE).heartbeat_at
    wait(
        "the new agent to heartbeat",
        lambda: Node.objects.get(name=NODE).heartbeat_at > beat,
        120,
        [agent_log],
    )
    time.sleep(5)
    replica.refresh_from_db()
    assert (replica.pid, replica.restarts, replica.state) == (pid, 0, ReplicaState.READY), (
        "adopted, not restarted"
    )
    assert _chat(replica, "smol-support", "Hello")["model"] == "smol-support"

    # The gateway in front of it, called with the official openai SDK and a team key; usage is metered
    # with the engine's own token counts, also for a client that hangs up mid-stream.
    def distill(gateway_url: str) -> None:
        settings.GATEWAY_INTERNAL_URL = gateway_url
        _distillation_with_the_endpoint_as_teacher(engineer, team, base, node.pool)

    _gateway_round_trip(admin, team, tmp_path, then=distill)

    # kill -9 of the engine: the agent notices, restarts it (with its adapter), and it serves again.
    os.kill(pid, signal.SIGKILL)

    def restarted():
        current = Replica.objects.get(pk=replica.pk)
        return (
            current
            if current.restarts == 1 and current.state == ReplicaState.READY and current.pid != pid
            else None
        )

    engine_logs = [agent_log, tmp_path / "node-data" / "engines" / "smol"]
    again = wait(
        "the killed engine to be restarted", restarted, ENGINE_READY_TIMEOUT, engine_logs, interval=3
    )
    assert "smol-support" in _models(again)
    assert _chat(again, "smol", "Say hello")["choices"][0]["message"]["content"]
    kinds = list(deployment.events.values_list("kind", flat=True))
    assert {"scheduled", "started", "ready", "adapter_loaded", "crashed"} <= set(kinds)

    # Stop while a long answer streams: the agent drains the replica (out of the gateways' tables, its
    # request finished) before it stops the engine, so the client gets the whole answer; nothing is left.
    got: dict = {}
    begun = threading.Event()
    streaming = threading.Thread(target=_stream_long, args=(again, 400, got, begun), daemon=True)
    streaming.start()
    assert begun.wait(120) and "error" not in got, got
    services.scale(actor=admin, deployment=deployment, replicas=0)
    reconcile.reconcile_deployment(deployment.pk)
    streaming.join(300)
    assert (got.get("finish"), got.get("tokens")) == ("length", 400), got

    # The engine's leader exits before the rest of its group (vLLM's engine core): the agent records the stop
    # once the whole group is gone, so the test waits for that record, not for the leader alone.
    def stopped_for_good() -> bool:
        current = Replica.objects.get(pk=again.pk)
        return current.state == ReplicaState.STOPPED and not processes.find(again.pid, again.pk)

    wait("the replica to stop", stopped_for_good, 120, [agent_log])
    stopped = deployment.events.filter(kind="stopped").order_by("-pk").first()
    assert stopped is not None and stopped.message.startswith("Drained in "), stopped
    assert agents[-1].poll() is None, "the agent is still running"
