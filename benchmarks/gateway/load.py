"""Load tools and what they measure: wrk (latency at a fixed concurrency), hey (a rate offered open-loop)
and a small asyncio client (time to the first streamed event); the request the benchmark sends."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import time
from pathlib import Path

from benchmarks.gateway.harness import session_cpu_seconds

P99_LIMIT_MS = 20.0
# A step serves at least this many requests, so that hey reports a p99 (it prints none below 100).
MIN_STEP_REQUESTS = 100
# Where even the first step fails, the search halves the rate down to this one, then reports 0.
MIN_RATE = 0.5
SATURATION_CONNECTIONS = 32
# A request of the shape the portfolio serves (a ticket router): a short prompt, a short answer.
PROMPT = "Route this support ticket to billing, technical, account or sales: I was charged twice this month."
MAX_TOKENS = 16


def request_body(model: str, *, stream: bool = False) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def completion_json(model: str) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": "billing"},
                }
            ],
            "usage": {"prompt_tokens": 42, "completion_tokens": 2, "total_tokens": 44},
        },
        separators=(",", ":"),
    )


def completion_sse(model: str) -> str:
    def chunk(delta: dict, finish: str | None, usage: dict | None = None, choices: bool = True) -> str:
        data = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            if choices
            else [],
        }
        if usage:
            data["usage"] = usage
        return "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"

    usage = {"prompt_tokens": 42, "completion_tokens": 2, "total_tokens": 44}
    return (
        chunk({"role": "assistant", "content": ""}, None)
        + chunk({"content": "bill"}, None)
        + chunk({"content": "ing"}, None)
        + chunk({}, "stop")
        + chunk({}, None, usage, choices=False)
        + "data: [DONE]\n\n"
    )


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[@@BODY@@]]
wrk.headers["Content-Type"] = "application/json"
@@AUTH@@
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


class Target:
    def __init__(
        self,
        name: str,
        url: str,
        token: str | None,
        model: str,
        stream_url: str,
        stream_model: str,
        sid: int | None = None,
    ):
        self.name, self.url, self.token, self.model = name, url, token, model
        self.stream_url, self.stream_model = stream_url, stream_model
        self.sid = sid  # the gateway's process session, for its CPU time
        self.requests = 0  # completed requests sent to it, all tools together

    def body(self, *, stream: bool = False) -> str:
        return request_body(self.stream_model if stream else self.model, stream=stream)


def run_wrk(target: Target, seconds: float, core: int, workdir: Path, connections: int = 1) -> dict:
    script = workdir / f"wrk-{target.name}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {target.token}"' if target.token else ""
    script.write_text(WRK_SCRIPT.replace("@@BODY@@", target.body()).replace("@@AUTH@@", auth))
    cpu_before = session_cpu_seconds(target.sid)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(core),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            target.url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    line = [x for x in out.stdout.splitlines() if x.startswith('{"requests"')]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"wrk against {target.name} failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[-1])
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    result["gateway_cpu_s"] = round(session_cpu_seconds(target.sid) - cpu_before, 3)
    target.requests += result["requests"]
    if result["non2xx"] or result["errors"]:
        raise RuntimeError(
            f"wrk against {target.name}: {result['non2xx']} non-2xx, {result['errors']} errors"
        )
    return result


def run_hey(target: Target, rate: float, seconds: float, core: int) -> dict:
    """Offer `rate` requests/s for `seconds` from max(2, rate/100) workers, each rate-limited (hey -q)."""
    workers = max(2, math.ceil(rate / 100))
    argv = [
        "taskset",
        "-c",
        str(core),
        "hey",
        "-z",
        f"{seconds:g}s",
        "-c",
        str(workers),
        "-q",
        f"{rate / workers:.3f}",
        "-t",
        "10",
        "-m",
        "POST",
        "-T",
        "application/json",
        "-d",
        target.body(),
    ]
    if target.token:
        argv += ["-H", f"Authorization: Bearer {target.token}"]
    cpu_before = session_cpu_seconds(target.sid)
    out = subprocess.run([*argv, target.url], capture_output=True, text=True, timeout=seconds + 60)
    cpu = session_cpu_seconds(target.sid) - cpu_before
    text = out.stdout
    if out.returncode != 0:
        raise RuntimeError(f"hey against {target.name} failed:\n{text}\n{out.stderr}")
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    percentiles = {
        int(p): round(float(s) * 1000, 3) for p, s in re.findall(r"\s(\d+)%+ in ([\d.]+) secs", text)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    slowest = round(float(re.search(r"Slowest:\s+([\d.]+) secs", text).group(1)) * 1000, 3)
    # hey prints no p99 under 100 samples; nearest-rank p99 is then the slowest, and the step says so.
    p99_is_slowest = 99 not in percentiles and sum(statuses.values()) < 100
    if p99_is_slowest:
        percentiles[99] = slowest
    errors = re.search(r"Error distribution:(.*)", text, re.S)
    target.requests += statuses.get(200, 0)
    return {
        "offered_rps": round(rate, 1),
        "workers": workers,
        "achieved_rps": round(rps, 1),
        "p50_ms": percentiles.get(50),
        "p99_ms": percentiles.get(99),
        "p99_is_slowest": p99_is_slowest,
        "statuses": statuses,
        "errors": errors.group(1).strip()[:500] if errors else "",
        "gateway_cpu_s": round(cpu, 3),
    }


def cpu_ms_per_request(rounds: list[dict]) -> float | None:
    """The gateway's own CPU milliseconds per request over wrk rounds. LiteLLM against ours is compared over
    the concurrency-1 rounds, which both run alike; not over the sustained steps, which differ by two orders
    of magnitude in rate (LiteLLM's served 30 requests at 5/s in the runs so far, its idle CPU spread over
    few; ours 188,386 at 500-8,000/s offered in the 2026-12-05 run)."""
    served = sum(r["requests"] for r in rounds)
    return round(1000 * sum(r["gateway_cpu_s"] for r in rounds) / served, 3) if served else None


def step_ok(step: dict) -> bool:
    ok_count = step["statuses"].get(200, 0)
    return (
        not step["errors"]
        and ok_count == sum(step["statuses"].values())
        and step["p99_ms"] is not None
        and step["p99_ms"] < P99_LIMIT_MS
        and step["achieved_rps"] >= 0.95 * step["offered_rps"]
    )


def step_seconds_for(rate: float, seconds: float) -> float:
    """How long a step at ``rate`` runs: ``seconds``, or longer where that would serve under
    MIN_STEP_REQUESTS (hey prints no p99 below 100 requests, and its paced workers fall a tick or two short
    of rate x seconds, hence the 10% margin)."""
    return max(seconds, math.ceil(MIN_STEP_REQUESTS * 11 / 10 / rate))


def sustained(target: Target, start: float, seconds: float, core: int, log) -> dict:
    """The highest offered rate served with p99 under 20 ms: double until a step fails, then bisect. Where
    the first step fails already, halve the rate until a step passes (none below MIN_RATE: then 0), and
    bisect between that one and the last failure. Each step serves at least MIN_STEP_REQUESTS, so that its
    p99 is hey's p99, not its slowest request."""
    steps, best, low, failed = [], None, 0.0, None

    def step_at(rate: float) -> dict:
        step = run_hey(target, rate, step_seconds_for(rate, seconds), core)
        step["ok"] = step_ok(step)
        steps.append(step)
        log(
            f"  {target.name}: {step['offered_rps']:>8.1f}/s offered -> {step['achieved_rps']:>8.1f}/s, "
            f"p99 {step['p99_ms']} ms {'ok' if step['ok'] else 'FAIL'}"
        )
        return step

    rate = start
    while failed is None and len(steps) < 12:
        step = step_at(rate)
        if step["ok"]:
            best, low, rate = step, rate, rate * 2
        else:
            failed = rate
    while best is None and failed is not None and failed / 2 >= MIN_RATE:
        rate = failed / 2
        step = step_at(rate)
        if step["ok"]:
            best, low = step, rate
        else:
            failed = rate
    for _ in range(3 if failed and best is not None else 0):
        # Stop within 5% (or 25/s); below 100/s, within a quarter of the failed rate.
        if failed - low < max(min(25.0, 0.25 * failed), 0.05 * failed):
            break
        rate = (low + failed) / 2
        step = step_at(rate)
        if step["ok"]:
            best, low = step, rate
        else:
            failed = rate
    served = sum(sum(step["statuses"].values()) for step in steps)
    cpu = sum(step["gateway_cpu_s"] for step in steps)
    return {
        "cpu_ms_per_request": round(1000 * cpu / served, 3) if served else None,
        "sustained_rps": best["achieved_rps"] if best else 0.0,
        "sustained_offered_rps": best["offered_rps"] if best else 0.0,
        "p99_ms_at_sustained": best["p99_ms"] if best else None,
        "steps": steps,
    }


async def _ttft(target: Target, count: int) -> list[float]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    body = target.body(stream=True).encode()
    times = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(target.stream_url, data=body, headers=headers) as response:
                first = None
                content = b""
                async for chunk in response.content.iter_any():
                    if first is None and b"data: {" in chunk:
                        first = time.perf_counter() - started
                    content += chunk
                if response.status != 200 or first is None or b"[DONE]" not in content:
                    raise RuntimeError(
                        f"streaming through {target.name}: {response.status} {content[:300]!r}"
                    )
            times.append(first * 1000)
            target.requests += 1
    return times


def ttft(target: Target, count: int) -> dict:
    times = sorted(asyncio.run(_ttft(target, count)))
    return {
        "count": len(times),
        "p50_ms": round(percentile(times, 50), 3),
        "p99_ms": round(percentile(times, 99), 3),
    }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
