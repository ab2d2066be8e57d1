"""The gateway benchmark's harness, without running it: hey's report is read right, and the search for
the highest rate with p99 under 20 ms doubles, then bisects, and reports what was served, not offered.
(The benchmark itself is run by `make bench-gateway`, never as a timed test.)"""

from __future__ import annotations

import subprocess
from decimal import Decimal

import pytest

from benchmarks.gateway import load

HEY_REPORT = """
Summary:
  Total:	0.4803 secs
  Slowest:	0.0145 secs
  Fastest:	0.0015 secs
  Average:	0.0048 secs
  Requests/sec:	416.4155

  Total data:	2634400 bytes
  Size/request:	13172 bytes

Response time histogram:
  0.002 [1]	|■
  0.003 [35]	|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.004 [49]	|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.005 [48]	|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.007 [37]	|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.008 [18]	|■■■■■■■■■■■■■■■
  0.009 [5]	|■■■■
  0.011 [1]	|■
  0.012 [5]	|■■■■
  0.013 [0]	|
  0.015 [1]	|■


Latency distribution:
  10% in 0.0022 secs
  25% in 0.0032 secs
  50% in 0.0045 secs
  75% in 0.0058 secs
  90% in 0.0072 secs
  95% in 0.0090 secs
  99% in 0.0119 secs

Details (average, fastest, slowest):
  DNS+dialup:	0.0002 secs, 0.0015 secs, 0.0145 secs
  DNS-lookup:	0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:	0.0000 secs, 0.0000 secs, 0.0006 secs
  resp wait:	0.0043 secs, 0.0013 secs, 0.0136 secs
  resp read:	0.0002 secs, 0.0000 secs, 0.0030 secs

Status code distribution:
  [200]	200 responses



"""


def target() -> load.Target:
    return load.Target(
        "portfolio",
        "http://127.0.0.1:1/v1/chat/completions",
        "slm_x",
        "bench-chat",
        "http://127.0.0.1:1/v1/chat/completions",
        "bench-stream",
    )


def test_hey_report_is_read_into_rate_percentiles_and_statuses(monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 0, HEY_REPORT, "")
    )
    step = load.run_hey(target(), rate=400, seconds=0.5, core=0)
    assert step["achieved_rps"] == 416.4 and step["statuses"] == {200: 200}
    assert (step["p50_ms"], step["p99_ms"]) == (4.5, 11.9)
    assert step["workers"] == 4 and not step["errors"]
    assert load.step_ok(step), "all 200, p99 under 20 ms, more than 95% of the offered rate"
    assert step["p99_is_slowest"] is False


def test_under_100_samples_the_p99_is_the_slowest_request_and_the_step_says_so(monkeypatch):
    """hey prints no p99 below 100 samples (LiteLLM's one step at 5/s is 30 requests)."""
    few = HEY_REPORT.replace("  99% in 0.0119 secs\n", "").replace(
        "[200]\t200 responses", "[200]\t30 responses"
    )
    monkeypatch.setattr(subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 0, few, ""))
    step = load.run_hey(target(), rate=5, seconds=6, core=0)
    assert step["p99_ms"] == 14.5 and step["p99_is_slowest"] is True


def test_cpu_per_request_is_compared_over_the_concurrency_1_rounds_both_gateways_run():
    """gateway.json of 2026-12-04: ours 3.82 s of CPU for 8,186 requests, LiteLLM 4.96 s for 439."""
    ours = [{"requests": 8186, "gateway_cpu_s": 3.82}, {"requests": 7036, "gateway_cpu_s": 3.85}]
    peer = [{"requests": 439, "gateway_cpu_s": 4.96}, {"requests": 339, "gateway_cpu_s": 4.94}]
    assert load.cpu_ms_per_request(ours) == 0.504, "7.67 s over 15,222 requests"
    assert load.cpu_ms_per_request(peer) == 12.725, "9.9 s over 778 requests"
    assert load.cpu_ms_per_request([]) is None


def test_a_step_fails_on_a_slow_p99_a_short_rate_or_any_error():
    good = {
        "statuses": {200: 1000},
        "errors": "",
        "p99_ms": 12.0,
        "achieved_rps": 990.0,
        "offered_rps": 1000.0,
    }
    assert load.step_ok(good)
    assert not load.step_ok({**good, "p99_ms": 20.5})
    assert not load.step_ok({**good, "achieved_rps": 900.0})
    assert not load.step_ok({**good, "statuses": {200: 990, 429: 10}})
    assert not load.step_ok({**good, "errors": "dial tcp: connection refused"})


def test_the_search_doubles_until_a_step_fails_then_bisects_and_reports_the_rate_served(monkeypatch):
    """A gateway that keeps p99 under 20 ms up to 3,000 req/s offered and serves 98% of what it is offered."""
    offered = []

    def fake_hey(_target, rate, _seconds, _core):
        offered.append(rate)
        return {
            "offered_rps": rate,
            "workers": 2,
            "achieved_rps": round(rate * 0.98, 1),
            "p50_ms": 2.0,
            "p99_ms": 10.0 if rate <= 3000 else 30.0,
            "statuses": {200: int(rate)},
            "errors": "",
            "gateway_cpu_s": rate * 0.00025,
        }

    monkeypatch.setattr(load, "run_hey", fake_hey)
    result = load.sustained(target(), 500, 6, 0, log=lambda _message: None)
    assert offered[:4] == [500, 1000, 2000, 4000], "doubling until the first failure"
    assert offered[4:] == [3000, 3500, 3250], (
        "then up to three bisections between the last pass and a failure"
    )
    assert result["sustained_offered_rps"] == 3000 and result["sustained_rps"] == 2940.0
    assert result["cpu_ms_per_request"] == 0.25


def fake_hey_passing_up_to(limit: float, offered: list):
    """hey against a gateway that keeps p99 under 20 ms up to ``limit`` offered and serves all it is offered;
    it records each step's (rate, seconds)."""

    def fake_hey(_target, rate, seconds, _core):
        offered.append((rate, seconds))
        served = int(rate * seconds)
        return {
            "offered_rps": round(rate, 1),
            "workers": 2,
            "achieved_rps": round(rate, 1),
            "p50_ms": 10.0,
            "p99_ms": 15.0 if rate <= limit else 30.0,
            "p99_is_slowest": served < 100,
            "statuses": {200: served},
            "errors": "",
            "gateway_cpu_s": served * 0.01,
        }

    return fake_hey


def test_where_the_first_step_fails_the_search_halves_the_rate_until_one_passes(monkeypatch):
    """LiteLLM's one step at 5/s failed and the search stopped there, reporting no rate at all."""
    offered = []
    monkeypatch.setattr(load, "run_hey", fake_hey_passing_up_to(2.5, offered))
    result = load.sustained(target(), 5, 6, 0, log=lambda _message: None)
    rates = [rate for rate, _ in offered]
    assert rates[:2] == [5, 2.5], "halved after the first failure"
    assert rates[2:] == [3.75, 3.125], (
        "then bisected between the pass and the failure, until within a quarter of the failed rate"
    )
    assert result["sustained_offered_rps"] == 2.5 and result["sustained_rps"] == 2.5
    assert result["p99_ms_at_sustained"] == 15.0


def test_each_step_serves_at_least_100_requests_so_that_its_p99_is_a_p99(monkeypatch):
    offered = []
    monkeypatch.setattr(load, "run_hey", fake_hey_passing_up_to(2.5, offered))
    load.sustained(target(), 5, 6, 0, log=lambda _message: None)
    assert all(rate * seconds >= 100 for rate, seconds in offered), offered
    assert offered[0] == (5, 22), "5/s for 22 s (100 requests and a margin), not 6 s (30 requests)"
    assert load.step_seconds_for(1000, 6) == 6, "fast steps keep their length"


def test_a_gateway_that_passes_at_no_rate_is_reported_at_0_after_halving_to_the_floor(monkeypatch):
    offered = []
    monkeypatch.setattr(load, "run_hey", fake_hey_passing_up_to(0.1, offered))
    result = load.sustained(target(), 50, 6, 0, log=lambda _message: None)
    rates = [rate for rate, _ in offered]
    assert rates == [50, 25, 12.5, 6.25, 3.125, 1.5625, 0.78125], "halving stops above 0.5/s"
    assert result["sustained_rps"] == 0.0 and result["p99_ms_at_sustained"] is None


def test_nothing_is_timed_unless_the_limits_bite():
    from benchmarks.gateway.run import check_limits_bite

    # gateway.json of 2026-12-05: what a run whose limits bite records.
    check_limits_bite(
        {
            "portfolio_rpm": [200, 200, 200, 429],
            "portfolio_budget": [429],
            "litellm_rpm": [200, 200, 429, 429],
        }
    )
    with pytest.raises(RuntimeError, match="rpm limit of 3.*token budget.*LiteLLM"):
        check_limits_bite({"portfolio_rpm": [200] * 4, "portfolio_budget": [200], "litellm_rpm": [200] * 4})
    with pytest.raises(RuntimeError, match="LiteLLM's deployment rpm limit of 3"):
        check_limits_bite(
            {"portfolio_rpm": [200, 200, 200, 429], "portfolio_budget": [429], "litellm_rpm": [200] * 4}
        )
    with pytest.raises(RuntimeError, match="token budget"):
        check_limits_bite({"portfolio_rpm": [429] * 4, "portfolio_budget": [200], "litellm_rpm": [429] * 4})


def test_a_composite_overhead_is_its_latency_less_the_hops_it_makes_round_by_round():
    from benchmarks.gateway.report import composite_figures

    def rounds(*p50s):
        return [{"p50_us": p * 1000, "p99_us": p * 2000} for p in p50s]

    c1 = {
        "direct": rounds(0.1, 0.1, 0.1),
        "portfolio": rounds(0.5, 0.6, 0.5),
        "router": rounds(1.3, 1.5, 1.2),
    }
    figures = composite_figures(c1, ("router",), hops=2)["router"]
    assert figures["p50_ms"] == 1.3
    assert figures["added_over_direct_calls_p50_ms"] == 1.1, "1.3 - 2 x 0.1, the median round"
    assert figures["overhead_over_plain_calls_p50_ms"] == 0.7, (
        "one plain call and one more direct hop: rounds 1.3 - 0.5 - 0.1, 1.5 - 0.6 - 0.1, 1.2 - 0.5 - 0.1"
    )


def test_a_composite_that_costs_one_plain_call_and_one_engine_call_has_no_overhead():
    """The client's round trip and admission are paid once by a composite, as by a plain call: subtracting
    two plain calls (the earlier formula) made the overhead negative by construction (-0.25 ms published)."""
    from benchmarks.gateway.report import composite_figures

    direct = [{"p50_us": 20, "p99_us": 170}, {"p50_us": 25, "p99_us": 450}, {"p50_us": 20, "p99_us": 160}]
    plain = [
        {"p50_us": 360, "p99_us": 3300},
        {"p50_us": 390, "p99_us": 3320},
        {"p50_us": 410, "p99_us": 3900},
    ]
    router = [
        {"p50_us": p["p50_us"] + d["p50_us"], "p99_us": p["p99_us"] + d["p99_us"]}
        for p, d in zip(plain, direct, strict=True)
    ]
    c1 = {"direct": direct, "portfolio": plain, "router": router}
    figures = composite_figures(c1, ("router",), hops=2)["router"]
    assert figures["overhead_over_plain_calls_p50_ms"] == pytest.approx(0.0, abs=1e-9)
    assert figures["overhead_over_plain_calls_p99_ms"] == pytest.approx(0.0, abs=1e-9)
    three_hops = composite_figures(
        {**c1, "cascade": [{"p50_us": r["p50_us"] + 20, "p99_us": r["p99_us"] + 160} for r in router]},
        ("cascade",),
        hops=3,
    )["cascade"]
    assert three_hops["overhead_over_plain_calls_p50_ms"] == pytest.approx(0.0, abs=1e-9), "median round"


def test_the_bare_relay_splits_our_added_latency_into_its_floor_and_the_gateways_own_round_by_round():
    from benchmarks.gateway.report import bare_relay_figures

    def rounds(*pairs):
        return [{"p50_us": p50 * 1000, "p99_us": p99 * 1000} for p50, p99 in pairs]

    c1 = {
        "direct": rounds((0.1, 0.2), (0.1, 0.3), (0.1, 0.2)),
        "bare_relay": rounds((0.3, 2.2), (0.3, 2.8), (0.4, 2.0)),
        "portfolio": rounds((0.5, 3.0), (0.6, 3.6), (0.6, 3.2)),
    }
    figures = bare_relay_figures(c1)
    assert figures["added_p50_ms"] == 0.2, "rounds: 0.2, 0.2, 0.3"
    assert figures["added_p99_ms"] == 2.0, "rounds: 2.0, 2.5, 1.8"
    assert figures["portfolio_over_bare_p50_ms"] == 0.2, "rounds: 0.2, 0.3, 0.2"
    assert figures["portfolio_over_bare_p99_ms"] == 0.8, "rounds: 0.8, 0.8, 1.2"


def test_the_bare_relay_relays_a_post_with_the_gateways_client(tmp_path):
    """The baseline answers what the upstream answered, so that what it measures is a relay."""
    import asyncio

    from aiohttp import web

    from benchmarks.gateway import bare_relay

    async def scenario():
        async def engine(request):
            return web.json_response({"echo": (await request.read()).decode(), "path": request.path})

        server = web.Application()
        server.router.add_post("/{tail:.*}", engine)
        runner = web.AppRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        bare_relay.UPSTREAM, bare_relay._client = f"http://127.0.0.1:{port}", None
        body = [
            {"type": "http.request", "body": b'{"a": ', "more_body": True},
            {"type": "http.request", "body": b"1}"},
        ]
        sent = []

        async def receive():
            return body.pop(0)

        async def send(message):
            sent.append(message)

        await bare_relay.app({"type": "http", "path": "/v1/chat/completions"}, receive, send)
        await bare_relay._client.close()
        await runner.cleanup()
        return sent

    start, answer = asyncio.run(scenario())
    assert start["status"] == 200 and start["headers"] == [
        (b"content-type", b"application/json; charset=utf-8")
    ]
    assert answer["body"] == b'{"echo": "{\\"a\\": 1}", "path": "/v1/chat/completions"}'


def test_the_benchmark_key_has_limits_a_key_may_have():
    """The bench's key was refused once the service bounded limits (tpm 2e9 > 1e9): `make bench-gateway`
    failed at its seed."""
    from benchmarks.gateway.ours import KEY_LIMITS
    from serving.gateway.services import _check_limit

    for name, value in KEY_LIMITS.items():
        assert _check_limit(name, value) == value


@pytest.mark.django_db(transaction=True)
def test_the_benchmark_seed_prices_every_plain_endpoint_once():
    """Each plain endpoint of the run carries one price, so that money is reserved and settled on every
    request (composites are priced by the endpoints that answer)."""
    from benchmarks.gateway.ours import seed
    from portfolio.billing.models import Price
    from serving.models import Endpoint

    seed(json_port=18001, sse_port=18002)
    priced = {p.subject_name: (p.input_per_million, p.output_per_million) for p in Price.objects.all()}
    plain = set(Endpoint.objects.filter(kind="plain").values_list("name", flat=True))
    assert plain == {"bench-chat", "bench-stream", "bench-chat-b"}
    assert priced == dict.fromkeys(plain, (Decimal("0.50"), Decimal("1.50")))
    assert Price.objects.count() == 3
