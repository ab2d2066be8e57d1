"""The GPU path, proven on a machine with one NVIDIA GPU: run by ``benchmarks/gpu/verify.sh``, which builds
the environments first. Prints one JSON line of what worked and the figures, and writes it to
``benchmarks/results/gpu.json``.

With real processes, as in production: the embedded PostgreSQL and Redis, a node agent of a GPU pool
(``portfolio node-agent``: it reports the GPU from nvidia-smi and starts vLLM's CUDA engine from
``.venv-engine-gpu``), a control worker and the gateway. In order, each step recorded as ok or its error:

1. the demo SmolLM2-135M-Instruct imported; a GPU pool;
2. a deployment of it on the GPU with LoRA enabled: seconds to ready, completion tokens/s at 8 concurrent
   requests straight to the engine, the GPU memory the engine holds (nvidia-smi);
3. a random rank-8 adapter registered and added to the running deployment (hot-loaded), an endpoint created:
   seconds to its first answer through the gateway, then tokens/s to it;
4. the deployment stopped (a trainer holds a whole GPU), then a short QLoRA job (one epoch of the demo
   ticket-routing rows, 4-bit base through bitsandbytes) run by the node agent: its status, seconds, steps
   and tokens/s, the GPU memory in use at its peak, the held-out accuracy;
5. a LoRA job with the fine-tune defaults (bf16 on the GPU), the same figures.

Without an engine (``verify.sh --no-engine``: a GPU image that cannot install vLLM's CUDA build), steps 2 and 3
are reported as not run and the result is not ok; steps 1, 4 and 5 still prove the node agent and training.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.gateway.harness import Processes  # noqa: E402
from benchmarks.platform_processes import base_env, start_gateway, start_node_agent, wait  # noqa: E402
from benchmarks.serving import load  # noqa: E402
from benchmarks.serving.adapters import register_adapter, write_adapter  # noqa: E402
from portfolio.accounts.actor import Actor  # noqa: E402
from portfolio.accounts.models import Team  # noqa: E402
from portfolio.registry.artifacts import materialize_version  # noqa: E402
from portfolio.registry.choices import Source, VersionStatus  # noqa: E402
from portfolio.registry.demo_model import MODEL_NAME  # noqa: E402
from portfolio.registry.models import ModelVersion  # noqa: E402
from serving import processes, reconcile  # noqa: E402
from serving import services as serving  # noqa: E402
from serving.agent import engine_key  # noqa: E402
from serving.choices import NodeState, PoolKind, ReplicaState  # noqa: E402
from serving.models import ComputePool, Node, Replica  # noqa: E402
from training import finetune, ingest  # noqa: E402
from training import services as training  # noqa: E402
from training.choices import JobStatus, Method  # noqa: E402
from training.evals.gateway import client_for  # noqa: E402
from training.models import Dataset, FineTuneJob  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "gpu.json"
DEMO_DATA = ROOT / "training" / "demo_data" / "ticket_routing.jsonl"
NODE, POOL, DEPLOYMENT, ADAPTER, ENDPOINT = (
    "gpu-verify-node",
    "gpu-verify",
    "gpu-smol",
    "gpu-a1",
    "gpu-smol-a1",
)
ENGINE_ARGS = {"max_model_len": 2048, "gpu_memory_utilization": 0.5, "enable_lora": True, "max_lora_rank": 16}
ACTOR = Actor.for_system("gpu-verify")
MIB = 2**20


def gpu_memory_mib(pids: set[int]) -> int:
    """GPU memory held by these processes, as nvidia-smi reports it (the engine core runs in a child)."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return sum(int(used) for pid, used in rows if int(pid) in pids)


def gpu_memory_used_mib() -> int:
    """All memory in use on the GPU: in a container nvidia-smi may not name the engine's processes."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line) for line in out.split() if line.strip().isdigit())


def tree(pid: int) -> set[int]:
    import psutil

    root = psutil.Process(pid)
    return {root.pid, *(child.pid for child in root.children(recursive=True))}


def start_platform(procs: Processes, data: Path) -> str:
    env = base_env()
    logs = data / "verify-logs"
    logs.mkdir(exist_ok=True)
    start_node_agent(procs, data, logs, env, pool=POOL, node=NODE)
    return start_gateway(procs, logs, env, fast=False)


def first_answer(team: Team, endpoint: str, timeout: float = 120) -> None:
    with client_for(team, endpoint, "gpu-verify") as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = client.post(
                "/v1/chat/completions",
                json={"model": endpoint, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            )
            if response.status_code == 200:
                return
            time.sleep(0.1)
    raise TimeoutError(f"{endpoint} did not answer through the gateway within {timeout:.0f}s")


def engine_installed() -> bool:
    """verify.sh says whether it installed vLLM's CUDA engine (``--no-engine``: it did not)."""
    return os.environ.get("GPU_VERIFY_ENGINE", "1") != "0"


def not_run(result: dict, name: str, why: str) -> None:
    result["steps"][name] = {"ok": False, "not_run": why}


def step(result: dict, name: str, call) -> bool:
    """Run one step; record its figures (a dict) or its error. Later steps that need it are skipped."""
    started = time.monotonic()
    try:
        figures = call() or {}
        result["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - started, 1), **figures}
        return True
    except Exception as exc:  # noqa: BLE001 - the line reports it; the rest of the run goes on where it can
        result["steps"][name] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"[:2000]}
        traceback.print_exc(file=sys.stderr)
        return False


def main() -> None:
    data = Path(settings.DATA_DIR).resolve()
    if "gpu-verify" not in data.name:
        sys.exit(f"Use a data folder of its own (its name holding 'gpu-verify'), not {data}.")
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    result: dict = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": smi.stdout.strip() or smi.stderr.strip(),
        "python": platform.python_version(),
        "steps": {},
    }
    state: dict = {}
    # Every module the gateway and the workers load, imported here first: a package the environment lacks
    # fails in a second, not after the gateway's health check times out.
    from django.urls import get_resolver

    import portfolio.asgi  # noqa: F401
    import portfolio.celery  # noqa: F401

    get_resolver().url_patterns  # noqa: B018 - resolving it imports every view
    call_command("migrate", "--noinput", verbosity=0)
    call_command("seed_demo")
    team = Team.objects.get(slug="demo")
    procs = Processes()
    try:

        def platform_up() -> dict:
            call_command("import_demo_model", team=team.slug)
            state["smol"] = ModelVersion.objects.get(
                model__name=MODEL_NAME, status=VersionStatus.READY, source=Source.GGUF
            )
            state["pool"] = ComputePool.objects.filter(name=POOL).first() or serving.create_pool(
                actor=ACTOR, name=POOL, kind=PoolKind.GPU
            )
            settings.GATEWAY_INTERNAL_URL = start_platform(procs, data)
            joined = timezone.now()
            node = wait(
                "the node agent",
                lambda: Node.objects.filter(
                    name=NODE, state=NodeState.READY, heartbeat_at__gt=joined
                ).first(),
                180,
            )
            return {"gpus_reported": len(node.gpus or [])}

        def deploy() -> dict:
            deployment = serving.create_deployment(
                actor=ACTOR,
                name=DEPLOYMENT,
                team=team,
                version=state["smol"],
                pool=state["pool"],
                args=ENGINE_ARGS,
            )
            state["deployment"] = deployment

            def ready() -> Replica | None:
                reconcile.reconcile_deployment(deployment.pk)
                return Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).first()

            replica = wait("the engine on the GPU", ready, 420, interval=2)
            url = f"http://{replica.host}:{replica.port}"
            figures = load.throughput(url, engine_key(replica.pk), [DEPLOYMENT]).as_dict()
            return {
                "base_tokens_per_second": figures["tokens_per_second"],
                "gpu_memory_mib": gpu_memory_mib(tree(replica.pid)),
                "gpu_memory_used_mib": gpu_memory_used_mib(),
            }

        def hot_load() -> dict:
            deployment = state["deployment"]
            folder = write_adapter(materialize_version(state["smol"]), data / "imports" / "adapter-1", seed=1)
            began = time.monotonic()
            adapter = register_adapter(team, state["smol"], folder)
            serving.add_adapter(actor=ACTOR, deployment=deployment, adapter=adapter, name=ADAPTER)
            serving.create_endpoint(
                actor=ACTOR, name=ENDPOINT, team=team, routes=[{"deployment": DEPLOYMENT, "adapter": ADAPTER}]
            )
            first_answer(team, ENDPOINT)
            answered = round(time.monotonic() - began, 2)
            replica = Replica.objects.get(deployment=deployment, state=ReplicaState.READY)
            url = f"http://{replica.host}:{replica.port}"
            figures = load.throughput(url, engine_key(replica.pk), [ADAPTER]).as_dict()
            return {
                "first_answer_seconds": answered,
                "adapter_tokens_per_second": figures["tokens_per_second"],
            }

        def qlora() -> dict:
            deployment = state.get("deployment")
            if deployment is not None:
                serving.scale(actor=ACTOR, deployment=deployment, replicas=0)

                def stopped() -> bool:
                    reconcile.reconcile_deployment(deployment.pk)
                    return not Replica.objects.filter(
                        deployment=deployment, state__in=ReplicaState.active()
                    ).exists()

                wait("the engine to stop", stopped, 120, interval=2)
            dataset = Dataset.objects.filter(
                owner_team=team, name="gpu-verify"
            ).first() or training.create_dataset(actor=ACTOR, owner_team=team, name="gpu-verify", kind="chat")
            version = dataset.versions.order_by("-number").first()
            if version is None:
                pending = training.upload_version(
                    actor=ACTOR,
                    dataset=dataset,
                    chunks=[DEMO_DATA.read_bytes()],
                    filename=DEMO_DATA.name,
                    base_version=state["smol"],
                    eval_fraction=0.25,
                    enqueue=False,
                )
                version, _ = ingest.run_here(pending.pk, actor=ACTOR)
            state["dataset_version"] = version
            return fine_tune(Method.QLORA, {"epochs": 1})

        def fine_tune(method: str, hyperparameters: dict) -> dict:
            job = finetune.start_job(
                actor=ACTOR,
                base_version=state["smol"],
                dataset_version=state["dataset_version"],
                pool=state["pool"],
                method=method,
                hyperparameters=hyperparameters,
            )
            peak = [0]

            def finished() -> FineTuneJob | None:
                peak[0] = max(peak[0], gpu_memory_used_mib())
                return FineTuneJob.objects.filter(pk=job.pk, status__in=JobStatus.finished()).first()

            job = wait(f"the {method} job", finished, 420, interval=3)
            if job.status != JobStatus.SUCCEEDED:
                raise RuntimeError(f"the {method} job {job.status}: {job.status_detail[-1500:]}")
            return {
                "steps": job.step,
                "tokens_per_second": job.tokens_per_second,
                "held_out_accuracy": (job.metrics.get("eval") or {}).get("accuracy"),
                "output": job.output_version.label,
                "gpu_memory_used_peak_mib": peak[0],
            }

        def lora() -> dict:
            # The defaults (epochs, rate, rank and early stopping chosen from the set), in bf16 on the GPU.
            return fine_tune(Method.LORA, {})

        if step(result, "platform", platform_up):
            if not engine_installed():
                why = "no vLLM CUDA engine on this machine (verify.sh --no-engine)"
                not_run(result, "deploy_on_gpu", why)
                not_run(result, "hot_load_adapter", why)
            elif step(result, "deploy_on_gpu", deploy):
                step(result, "hot_load_adapter", hot_load)
            if step(result, "qlora_job", qlora):
                step(result, "lora_job", lora)
    finally:
        procs.stop_all()
        for _, engine in processes.all_engines(under=data):
            processes.stop(engine, grace=15)
    result["ok"] = all(s.get("ok") for s in result["steps"].values()) and len(result["steps"]) == 5
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
