"""A merged adapter answers as the adapter served dynamically, on real vLLM CPU engines: the demo SmolLM2 with a
LoRA engine serving a random adapter, and the same adapter merged by the platform's merge job into a full
version, deployed without LoRA. Temperature 0 on a fixed prompt set; float32 on both engines, so that the
comparison is of the merge, not of bfloat16 rounding in two different orders. Two engine starts."""

from __future__ import annotations

import json
import urllib.request

import pytest

from portfolio.registry import merging
from portfolio.registry import services as registry_services
from portfolio.registry.artifacts import materialize_version
from portfolio.registry.choices import Source, VersionStatus
from serving import agent, services
from serving.models import Replica
from tests.conftest import actor_for
from tests.e2e.agent import deploy_demo_model, ready_replica, wait, wait_until_ready
from tests.e2e.lora import make_adapter
from tests.registry.conftest import import_here
from training import tasks
from training.choices import JobStatus
from training.models import MergeJob

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = [
    "I was charged twice for my subscription.",
    "The app crashes when I open settings.",
    "How do I change my email address?",
    "My parcel never arrived.",
]
ARGS = {"max_model_len": 512, "dtype": "float32"}


def answers(replica: Replica, model: str) -> list[str]:
    texts = []
    for prompt in PROMPTS:
        request = urllib.request.Request(
            f"{replica.base_url}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 12,
                    "temperature": 0,
                }
            ).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {agent.engine_key(replica.pk)}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            texts.append(json.loads(response.read())["choices"][0]["message"]["content"])
    return texts


def test_the_merged_version_answers_as_the_dynamic_adapter(org, node_agent, settings, tmp_path):
    _, agent_log = node_agent
    admin, engineer = actor_for(org["admin"]), actor_for(org["engineer"])
    dynamic = deploy_demo_model(
        admin,
        settings,
        tmp_path,
        agent_log,
        {**ARGS, "enable_lora": True, "max_loras": 1, "max_lora_rank": 8},
    )
    team, base = dynamic.owner_team, dynamic.version
    adapter_dir = make_adapter(
        materialize_version(base),
        settings.IMPORT_ROOTS[0] / "router",
        scale=0.05,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    model = registry_services.create_model(actor=engineer, name="merge-router", owner_team=team)
    adapter = import_here(engineer, model, Source.LOCAL, str(adapter_dir), base_version=base)
    assert adapter.status == VersionStatus.READY, adapter.status_detail

    # The adapter merged by the platform's job (run here: the test has no control worker).
    job_id = merging.request_merge(actor=engineer, version=adapter).id
    assert tasks.merge_adapter(job_id) == JobStatus.SUCCEEDED, MergeJob.objects.get(pk=job_id).status_detail
    merged = MergeJob.objects.get(pk=job_id).output_version

    services.add_adapter(actor=admin, deployment=dynamic, adapter=adapter, name="smol-router")
    full = services.create_deployment(
        actor=admin, name="smol-merged", team=team, version=merged, pool=dynamic.pool, args=ARGS
    )
    merged_replica = wait_until_ready(full, tmp_path, agent_log)
    wait_until_ready(dynamic, tmp_path, agent_log)

    def loaded() -> Replica | None:
        replica = ready_replica(dynamic)
        return replica if replica is not None and "smol-router" in replica.loaded_adapters else None

    lora_replica = wait("the LoRA engine to load its adapter", loaded, 120, [agent_log], interval=3)

    dynamic_answers = answers(lora_replica, "smol-router")
    assert answers(merged_replica, "smol-merged") == dynamic_answers
    # The adapter changes what is decoded: a merge that lost it would not pass the comparison above.
    assert answers(lora_replica, "smol") != dynamic_answers
