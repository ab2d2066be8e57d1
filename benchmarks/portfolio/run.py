"""The thesis, measured in the product: on the demo ticket-routing task, a fine-tuned 135M model against
its base and against a twice larger general model, scored through the platform.

    PORTFOLIO_DATA_DIR=.portfolio-bench-portfolio python -m benchmarks.portfolio.run     (make bench-portfolio)

On this machine's CPU, with real processes: the embedded PostgreSQL and Redis, a node agent (`portfolio
node-agent`, a Celery worker) that runs the fine-tune job and starts the vLLM CPU engines, and the gateway
(uvicorn serving ``portfolio.asgi``). In order:

1. The demo SmolLM2-135M-Instruct (``import_demo_model``) and Gemma 3 270M (its Q4_K_M GGUF parts from the
   package registry, through the GGUF importer) are registered; the demo ticket-routing rows are uploaded as
   a dataset version holding out a quarter of them (20 of 80 rows, ``EVAL_FRACTION``).
2. A LoRA fine-tune job of SmolLM2 on the other 60 rows with the platform's default hyperparameters (no
   value set: ``training.defaults.Hyperparameters.resolved`` chooses them), run by the node agent.
3. Two deployments on the node: SmolLM2 with the job's adapter hot-loaded, and Gemma. Three endpoints:
   the base, the adapter, and Gemma; prices from billing's price book (the demo's token prices for both
   SmolLM2 endpoints, twice them for Gemma, which has twice the parameters).
4. A task with the dataset version's held-out rows as its eval set (scoring.py). The base and the adapter are scored by
   the platform's own endpoint eval runs (``training.evals.runs``: chat completions through the gateway,
   one request at a time, metered to the team; cost per 1,000 requests from the price book). Gemma is the
   base model and has no chat template: it is scored few-shot through ``/v1/completions`` (two examples per
   queue from the training rows), through the same gateway with the same kind of service key, scored and
   priced with the same functions.
5. The cascade endpoint (the tuned 135M first; when its answer's mean token log-probability is under a
   threshold, the request escalates to Gemma, which the cascade asks the same few-shot prompt
   through ``/v1/completions``: Gemma has no chat template, so a cascade of chat calls could not reach it
   otherwise) is scored by an endpoint eval run like the chat candidates; its cost per 1,000 requests and
   escalation rate come from its usage rows (each hop priced by its own endpoint). It is scored at each of
   ``--cascade-thresholds`` (a sweep fixed before measuring, so no threshold is tuned on the held-out rows).

Writes ``benchmarks/results/portfolio.json`` and prints the table. The data folder must be one of its own
(its name holds "bench"). Takes 15-30 minutes on two busy cores (two engine starts, one training run). The
set-up is platform_setup.py's, the scoring scoring.py's.
"""

from __future__ import annotations

import argparse
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

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.gateway.harness import Processes  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from benchmarks.portfolio import report, scoring  # noqa: E402
from benchmarks.portfolio.platform_setup import (  # noqa: E402
    ACTOR,
    ENGINE_TIMEOUT,
    EVAL_FRACTION,
    GEMMA_PRICE,
    NODE,
    POOL,
    ROOT,
    SMOL_PRICE,
    dataset_version,
    deploy,
    endpoint,
    fine_tune,
    models,
    ready,
    say,
    start_platform,
    training_figures,
    wait,
)
from portfolio.accounts.models import Team  # noqa: E402
from serving import processes  # noqa: E402
from serving import services as serving  # noqa: E402
from serving.choices import NodeState, PoolKind  # noqa: E402
from serving.models import ComputePool, Node  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "portfolio.json"
# Fixed before measuring, not tuned on the held-out rows: an answer is escalated when its tokens average
# under e^t probability each (about 0.61, 0.90, 0.98).
CASCADE_THRESHOLDS = [-0.5, -0.1, -0.02]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per process (default: torch's own)"
    )
    parser.add_argument(
        "--cascade-thresholds",
        type=float,
        nargs="+",
        default=CASCADE_THRESHOLDS,
        help=f"the cascade's thresholds to score: mean token log-probabilities under which it escalates "
        f"(default {' '.join(map(str, CASCADE_THRESHOLDS))})",
    )
    args = parser.parse_args()
    data = Path(settings.DATA_DIR).resolve()
    if "bench" not in data.name:
        sys.exit(f"Use a data folder of its own for the benchmark (its name holding 'bench'), not {data}.")
    started = time.monotonic()
    call_command("migrate", "--noinput", verbosity=0)
    call_command("seed_demo")
    team = Team.objects.get(slug="demo")
    smol, gemma = models(team)
    version = dataset_version(team, smol)
    say(f"dataset {version.label}: {version.train_count} training rows, {version.eval_count} held out")
    pool = ComputePool.objects.filter(name=POOL).first() or serving.create_pool(
        actor=ACTOR, name=POOL, kind=PoolKind.CPU
    )
    procs = Processes()
    logs = data / "bench-logs"
    try:
        settings.GATEWAY_INTERNAL_URL = start_platform(procs, data, args.threads)
        joined = timezone.now()
        wait(
            "the node agent",
            lambda: Node.objects.filter(name=NODE, state=NodeState.READY, heartbeat_at__gt=joined).first(),
            180,
            [logs / "agent.log"],
        )
        train_started = time.monotonic()
        job = fine_tune(team, smol, version, pool, logs / "agent.log")
        fine_tune_seconds = round(time.monotonic() - train_started)
        say(f"fine-tune done in {fine_tune_seconds}s: {job.output_version.label}")
        smol_dep = deploy(
            team,
            pool,
            "bench-smol",
            smol,
            {"max_model_len": 2048, "enable_lora": True, "max_loras": 2, "max_lora_rank": 16},
        )
        gemma_dep = deploy(team, pool, "bench-gemma", gemma, {"max_model_len": 2048})
        adapter = smol_dep.adapters.filter(version=job.output_version).first() or serving.add_adapter(
            actor=ACTOR, deployment=smol_dep, adapter=job.output_version, name="bench-router-lora"
        )
        engine_logs = [logs / "agent.log", *(data / "node" / "engines").glob("*/*.log")]
        for dep in (smol_dep, gemma_dep):
            wait(
                f"{dep.name} to be ready", lambda dep=dep: ready(dep), ENGINE_TIMEOUT, engine_logs, interval=5
            )
        say("engines ready")
        base_ep = endpoint(team, "bench-smol-base", {"deployment": smol_dep.name}, SMOL_PRICE)
        tuned_ep = endpoint(
            team, "bench-smol-tuned", {"deployment": smol_dep.name, "adapter": adapter.name}, SMOL_PRICE
        )
        gemma_ep = endpoint(team, "bench-gemma", {"deployment": gemma_dep.name}, GEMMA_PRICE)
        time.sleep(3)  # the gateway's routing table refresh
        evals = scoring.eval_set(team, version)
        candidates = []
        for name, target, note in (
            ("smollm2-135m base", base_ep, "zero-shot, the dataset's own system prompt"),
            ("smollm2-135m tuned (LoRA)", tuned_ep, "the adapter of the default-hyperparameter job"),
        ):
            say(f"scoring {name}")
            candidates.append(scoring.score_chat(name, target, evals, note))
        say(f"scoring {report.REFERENCE}")
        candidates.append(scoring.score_few_shot(report.REFERENCE, gemma_ep, evals, version))
        cascade: dict = {"measured": True, "thresholds": []}
        for threshold in args.cascade_thresholds:
            say(f"scoring the cascade at threshold {threshold:g}")
            cascade_ep = scoring.cascade_endpoint(team, tuned_ep, gemma_ep, version, threshold)
            time.sleep(3)  # the gateway's routing table refresh
            found, figures = scoring.score_cascade(f"cascade at {threshold:g}", cascade_ep, evals)
            candidates.append(found)
            cascade["thresholds"].append(figures)
    finally:
        procs.stop_all()
        for _, engine in processes.all_engines(under=data):
            processes.stop(engine, grace=15)
    load = os.getloadavg()
    result = report.result(
        candidates,
        context={
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                **machine(),
                "cpus": os.cpu_count(),
                "threads_per_process": args.threads,
                "python": platform.python_version(),
                "load_average_at_end": [round(x, 2) for x in load],
            },
            "task": {
                "dataset": "training/demo_data/ticket_routing.jsonl",
                "rows": version.row_count,
                "train_rows": version.train_count,
                "heldout_rows": version.eval_count,
                "eval_fraction": EVAL_FRACTION,
            },
            # From queued to registered: loading, the loop, saving, the job's own scoring of base and adapter.
            # From the job's own times: a rerun that reuses the job (same data folder) says the same.
            "training": {
                **training_figures(job),
                "job_seconds_queued_to_done": round((job.finished_at - job.created_at).total_seconds()),
                "job_reused": fine_tune_seconds < 5,
            },
            "prices_per_million_tokens": {
                "smollm2 endpoints": {k: str(v) for k, v in SMOL_PRICE.items()},
                "gemma endpoint": {k: str(v) for k, v in GEMMA_PRICE.items()},
            },
            "run_seconds": round(time.monotonic() - started),
        },
        cascade=cascade,
    )
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(candidates))
    print(json.dumps(result["ratios"], indent=2))
    say(f"wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
