"""The gateway benchmark (`make bench-gateway`): our gateway against LiteLLM's proxy, side by side, in one run.

One fixed-response upstream (nginx, answering like an OpenAI-compatible engine in microseconds) serves
three kinds of calls on the same cores: direct, through our gateway (keys, limits, budget and metering
on), and through LiteLLM's proxy. The difference to the direct calls is what each gateway adds.

Measured with public tools: wrk (latency at concurrency 1), hey (the highest offered rate whose p99
stays under 20 ms) and a small asyncio client (time to the first streamed event). Pinning: the gateways
on one core, everything else (nginx, load generators, Redis, PostgreSQL, the usage flusher) on another.
Writes benchmarks/results/gateway.json and prints a table. Everything it starts, it stops.

    .venv/bin/python -m benchmarks.gateway.run [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from benchmarks.gateway.harness import Background, Processes, free_port, post, wait_http  # noqa: E402
from benchmarks.gateway.load import (  # noqa: E402
    P99_LIMIT_MS,
    SATURATION_CONNECTIONS,
    Target,
    completion_json,
    completion_sse,
    request_body,
    run_hey,
    run_wrk,
    sustained,
    ttft,
)
from benchmarks.gateway.ours import (  # noqa: E402
    database_url,
    flusher_main,
    fresh_embedded_database,
    pin_services,
    seed,
    setup_django,
)
from benchmarks.gateway.peer import LITELLM_VENV, litellm_version, probe_litellm_virtual_keys, start_litellm  # noqa: E402
from benchmarks.gateway.report import bare_relay_figures, composite_figures, print_table, report  # noqa: E402
from benchmarks.host import machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter steps (for trying the harness out)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gateway.json"))
    parser.add_argument("--flusher", action="store_true", help=argparse.SUPPRESS)
    # For profiling by hand: keep everything up for N seconds after start-up (targets in hold.json).
    parser.add_argument("--hold", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flusher:
        flusher_main()
        return 0

    def interrupted(signum, _frame):
        # A second signal (Ctrl-C twice, `timeout` passing its own on) must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")  # so that `finally` stops what this run started

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("The gateway benchmark needs at least 2 cores (one for the gateways, one for the rest).")
        return 2
    load_core, gateway_core = cores[0], cores[1]
    for tool in ("nginx", "wrk", "hey", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing: run `make bench-gateway`, which installs it.")
            return 2
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        print("LiteLLM is missing: run `make bench-gateway`, which installs it into .venv-litellm.")
        return 2
    rounds = 3
    c1_seconds = 3 if args.quick else 5
    step_seconds = 3 if args.quick else 6
    ttft_count = 100 if args.quick else 300
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", flush=True)

    # This process and what it starts (embedded servers, nginx, flusher, load tools) live on the load core.
    os.sched_setaffinity(0, {load_core})
    data_dir = ROOT / "benchmarks" / ".data"
    # The embedded servers keep running between commands, as in `make run`: stop them at the end only if
    # this run is the one that starts them.
    from portfolio import embedded

    embedded_before = (embedded.postgres_dir(data_dir) / "postmaster.pid").exists()
    if not os.environ.get("DATABASE_URL"):
        fresh_embedded_database(data_dir)
    setup_django(data_dir)
    from django.conf import settings
    from django.core.management import call_command

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs = Processes()
    try:
        log(f"data: {settings.DATA_DIR} (services: {', '.join(settings.EMBEDDED_SERVICES) or 'external'})")
        pinned_services, service_pids = pin_services(load_core)
        background = Background(service_pids)
        call_command("migrate", verbosity=0)
        json_port, sse_port = free_port(), free_port()
        nginx_dir = workdir / "nginx"
        nginx_dir.mkdir()
        json_body, sse_body = completion_json("bench-chat"), completion_sse("bench-stream")
        assert "'" not in json_body + sse_body and "$" not in json_body + sse_body
        (nginx_dir / "nginx.conf").write_text(
            (HERE / "nginx.conf.template")
            .read_text()
            .replace("@@DIR@@", str(nginx_dir))
            .replace("@@JSON_PORT@@", str(json_port))
            .replace("@@SSE_PORT@@", str(sse_port))
            .replace("@@JSON_BODY@@", json_body)
            .replace("@@SSE_BODY@@", sse_body.replace("\n", "\\n"))
        )
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = procs.start(
            "nginx",
            [nginx_bin, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir)],
            log=workdir / "nginx.log",
            stop_signal=signal.SIGQUIT,
        )
        wait_http(f"http://127.0.0.1:{json_port}/v1/models", nginx, workdir / "nginx.log", timeout=20)
        seeded = seed(json_port, sse_port)
        log(
            f"nginx on :{json_port} (JSON) and :{sse_port} (SSE); team {seeded['team']}, key with limits and budget"
        )

        # Our gateway: one uvicorn worker on the gateway core, pointed at this run's database and Redis.
        ours_port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "PYTHONUNBUFFERED": "1",
        }
        ours_log = workdir / "portfolio-gateway.log"
        ours = procs.start(
            "portfolio",
            [*uvicorn_on(gateway_core), "portfolio.asgi:application", "--port", str(ours_port)],
            log=ours_log,
            env=env,
            cwd=ROOT,
        )
        ours_base = f"http://127.0.0.1:{ours_port}"
        wait_http(
            f"{ours_base}/v1/models", ours, ours_log, headers={"Authorization": f"Bearer {seeded['secret']}"}
        )
        flusher = procs.start(
            "flusher",
            ["nice", "-n", "10", sys.executable, __file__, "--flusher"],
            log=workdir / "flusher.log",
            env=env,
            cwd=ROOT,
        )

        log("probing LiteLLM's virtual keys (Prisma) ...")
        probe = probe_litellm_virtual_keys(workdir)
        log(f"  {'available' if probe['ok'] else 'not available'}: {probe['detail'][:200]}")
        litellm_mode = "master-key"  # see the note in the results: virtual keys need Prisma's engines
        litellm_base, master_key, litellm_process = start_litellm(
            procs, workdir, gateway_core, json_port, sse_port
        )
        log(
            f"our gateway on :{ours_port}, LiteLLM {litellm_version()} on {litellm_base} (both on core {gateway_core})"
        )

        # The naive baseline: the least a Python gateway can do, served the same way on the same core.
        bare_port = free_port()
        bare_log = workdir / "bare-relay.log"
        bare_process = procs.start(
            "bare-relay",
            [*uvicorn_on(gateway_core), "benchmarks.gateway.bare_relay:app", "--port", str(bare_port)],
            log=bare_log,
            env={**env, "BARE_RELAY_UPSTREAM": f"http://127.0.0.1:{json_port}"},
            cwd=ROOT,
        )
        bare_base = f"http://127.0.0.1:{bare_port}"
        wait_http(f"{bare_base}/v1/models", bare_process, bare_log)

        direct = Target(
            "direct",
            f"http://127.0.0.1:{json_port}/v1/chat/completions",
            None,
            "bench-chat",
            f"http://127.0.0.1:{sse_port}/v1/chat/completions",
            "bench-stream",
        )
        portfolio = Target(
            "portfolio",
            f"{ours_base}/v1/chat/completions",
            seeded["secret"],
            "bench-chat",
            f"{ours_base}/v1/chat/completions",
            "bench-stream",
            sid=ours.pid,
        )
        litellm = Target(
            "litellm",
            f"{litellm_base}/v1/chat/completions",
            master_key,
            "bench-chat",
            f"{litellm_base}/v1/chat/completions",
            "bench-stream",
            sid=litellm_process.pid,
        )
        bare = Target(
            "bare_relay",
            f"{bare_base}/v1/chat/completions",
            None,
            "bench-chat",
            f"{bare_base}/v1/chat/completions",
            "bench-stream",
            sid=bare_process.pid,
        )
        targets = (direct, portfolio, litellm)
        if args.hold:
            (ROOT / "benchmarks" / ".data" / "hold.json").write_text(
                json.dumps(
                    {
                        t.name: {
                            "url": t.url,
                            "token": t.token,
                            "body": t.body(),
                            "pid": {"portfolio": ours.pid}.get(t.name),
                        }
                        for t in targets
                    }
                )
            )
            log(f"holding for {args.hold:g}s (targets in benchmarks/.data/hold.json)")
            time.sleep(args.hold)

        # Both gateways answer correctly, and their limits are enforced, before anything is timed.
        for target in targets:
            status, body = post(target.url, target.body(), target.token)
            if status != 200 or b'"usage"' not in body:
                raise RuntimeError(f"{target.name} answered {status}: {body[:300]!r}")
            target.requests += target is portfolio
        limits_check = {
            "portfolio_rpm": [
                post(portfolio.url, portfolio.body(), seeded["limited_secret"])[0] for _ in range(4)
            ],
            "portfolio_budget": [post(portfolio.url, portfolio.body(), seeded["budget_secret"])[0]],
            "litellm_rpm": [
                post(litellm.url, request_body("bench-limited"), master_key)[0] for _ in range(4)
            ],
        }
        log(f"limits checked: {limits_check}")
        check_limits_bite(limits_check)

        log("latency at concurrency 1 (wrk -t1 -c1), warm-up then interleaved rounds ...")
        for target in (*targets, bare):
            run_wrk(target, 2, load_core, workdir)
        c1 = {t.name: [] for t in (*targets, bare)}
        for _ in range(rounds):
            for target in (*targets, bare):
                c1[target.name].append(run_wrk(target, c1_seconds, load_core, workdir))
        for target in (*targets, bare):
            p50s = [r["p50_us"] / 1000 for r in c1[target.name]]
            p99s = [r["p99_us"] / 1000 for r in c1[target.name]]
            log(f"  {target.name:>9}: p50 {p50s} ms, p99 {p99s} ms")

        # Router and cascade: each request makes two hops to the engine inside one call of the gateway; what
        # composing them costs is their latency less one plain call through the gateway and one more direct
        # call to the engine per extra hop (the overhead of composing, goal <= 1 ms); see composite_figures.
        log("router and cascade at concurrency 1, interleaved with direct and plain calls ...")
        composites = [
            Target(
                name,
                portfolio.url,
                seeded["composite_secret"],
                f"bench-{name}",
                portfolio.url,
                f"bench-{name}",
                ours.pid,
            )
            for name in ("router", "cascade")
        ]
        for target in composites:
            status, body = post(target.url, target.body(), target.token)
            if status != 200:
                raise RuntimeError(f"{target.name} answered {status}: {body[:300]!r}")
            target.requests += 1
            run_wrk(target, 2, load_core, workdir)
        composite_c1 = {t.name: [] for t in (direct, portfolio, *composites)}
        for _ in range(rounds):
            for target in (direct, portfolio, *composites):
                composite_c1[target.name].append(run_wrk(target, c1_seconds, load_core, workdir))
        for target in composites:
            log(f"  {target.name:>9}: p50 {[r['p50_us'] / 1000 for r in composite_c1[target.name]]} ms")

        log("time to first streamed event at concurrency 1 ...")
        for target in targets:
            ttft(target, 20)
        ttfts = {t.name: [] for t in targets}
        for _ in range(rounds):
            for target in targets:
                ttfts[target.name].append(ttft(target, ttft_count // rounds))
        for target in targets:
            log(f"  {target.name:>9}: p50 {[r['p50_ms'] for r in ttfts[target.name]]} ms")

        log(f"sustained rate with p99 < {P99_LIMIT_MS:g} ms (hey, {step_seconds}s steps) ...")
        rate = {
            "portfolio": sustained(portfolio, 500, step_seconds, load_core, log),
            # Near its rate at concurrency 1 (about 100/s): the search halves from there if need be.
            "litellm": sustained(litellm, 50, step_seconds, load_core, log),
        }
        # The floor: the same load generator straight to nginx at the rate ours sustained.
        floor = run_hey(direct, rate["portfolio"]["sustained_offered_rps"] or 500, step_seconds, load_core)
        log(f"  direct at {floor['offered_rps']:.0f}/s: p99 {floor['p99_ms']} ms")
        log(f"saturation (wrk -t1 -c{SATURATION_CONNECTIONS}, closed loop, any latency) ...")
        for target in (portfolio, litellm):
            rate[target.name]["saturation"] = run_wrk(
                target, c1_seconds, load_core, workdir, SATURATION_CONNECTIONS
            )
            log(
                f"  {target.name:>9}: {rate[target.name]['saturation']['rps']:.0f}/s, "
                f"p99 {rate[target.name]['saturation']['p99_us'] / 1000:.1f} ms"
            )

        # Metering: stop the gateway (so every event is written), drain the stream, count the rows.
        procs.stop(ours)
        procs.stop(flusher)
        from serving.gateway import usage
        from serving.gateway.models import UsageEvent

        while usage.flush(batch=settings.USAGE_FLUSH_BATCH):
            pass
        events = UsageEvent.objects.filter(api_key_id=seeded["key_pk"])
        metering = {
            "requests_completed_by_clients": portfolio.requests,
            "usage_events_written": events.count(),
            "usage_events_streamed": events.filter(stream=True).count(),
            "usage_events_non_200": events.exclude(status=200).count(),
            "note": "events can exceed client-counted requests by the few in flight when wrk stops",
            # Their own key: one row per hop, two hops a request.
            "composite_requests_completed_by_clients": sum(t.requests for t in composites),
            "composite_usage_events_written": UsageEvent.objects.filter(
                api_key_id=seeded["composite_key_pk"]
            ).count(),
        }
        log(f"metering: {metering}")

        # The bare relay still runs (stopped at the end): its CPU is this run's, not other work (it was left
        # out before 2026-12-07, which overstated `other_work_cores`).
        still_running = [nginx.pid, litellm_process.pid, bare_process.pid]
        machine_info = {**machine(), "background": background.report(still_running)}
        results = report(
            machine_info,
            rounds,
            c1,
            ttfts,
            rate,
            floor,
            metering,
            limits_check,
            probe,
            litellm_mode,
            seeded,
            load_core,
            gateway_core,
            pinned_services,
            c1_seconds,
            step_seconds,
            ttft_count,
            args.quick,
            time.monotonic() - began,
        )
        results["composites"] = composite_figures(composite_c1, ("router", "cascade"), hops=2)
        results["bare_relay"] = bare_relay_figures(c1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        log(f"wrote {args.out}")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        if settings.EMBEDDED_SERVICES and not embedded_before:
            embedded.stop_all(settings.DATA_DIR)


def check_limits_bite(limits_check: dict) -> None:
    """Refuse to time anything unless the limits bit: our rpm-3 key got a 429 within 4 requests, our key
    over its token budget got one on its one request, and LiteLLM's rpm-3 deployment got one within 4."""
    missed = [
        what
        for what, field in (
            ("our key's rpm limit of 3", "portfolio_rpm"),
            ("our key's token budget", "portfolio_budget"),
            ("LiteLLM's deployment rpm limit of 3", "litellm_rpm"),
        )
        if 429 not in limits_check.get(field, [])
    ]
    if missed:
        raise RuntimeError(f"limits did not bite (no 429): {'; '.join(missed)}; statuses {limits_check}")


def uvicorn_on(core: int) -> list[str]:
    """A one-worker uvicorn on ``core``, as production runs the gateway (the app and port to follow)."""
    return [
        *("taskset", "-c", str(core), sys.executable, "-m", "uvicorn", "--host", "127.0.0.1"),
        *("--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log"),
    ]


if __name__ == "__main__":
    sys.exit(main())
