"""Budgets and per-minute limits through a real gateway process, against a stand-in engine that bills as
vLLM does: the overspends the issue found (n, list prompts, max_completion_tokens) are refused or stay
within budget, refusals say what to change, and every Redis counter expires."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import httpx
import pytest

from serving.gateway import keystate, usage
from serving.gateway.models import ApiKey, UsageEvent
from tests.gateway.conftest import flush_settled, wait_for_model

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]


def call(base: str, secret: str, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def billed() -> int:
    """Tokens billed so far, from the usage events the gateway wrote."""
    flush_settled()
    return sum(e.input_tokens + e.output_tokens for e in UsageEvent.objects.all())


def counters(key_id: str) -> dict[str, int]:
    """Each Redis counter of a key and its time to live (-1: none)."""
    redis = keystate.client()
    return {name.decode(): redis.ttl(name) for name in redis.scan_iter(f"gw:*:{key_id}:*")}


def test_n_completions_are_reserved_for_and_never_overspend_a_budget(gateway_url, stack):
    dep, engines = stack["deployment"]("n-dep")
    stack["endpoint"]("n-model", dep, max_n=16)
    secret = stack["key"](monthly_token_budget=600)
    wait_for_model(gateway_url, secret, "n-model")
    # The call: 16 completions of 48 tokens billed 805 tokens on a 600-token budget.
    refused = call(gateway_url, secret, {"model": "n-model", "messages": MESSAGES, "n": 16, "max_tokens": 48})
    assert refused.status_code == 429, refused.text
    assert "could use up to" in refused.json()["error"]["message"]
    assert engines[0].requests == [] and billed() == 0
    statuses = [
        call(
            gateway_url, secret, {"model": "n-model", "messages": MESSAGES, "n": 4, "max_tokens": 48}
        ).status_code
        for _ in range(4)
    ]
    assert statuses[0] == 200 and 429 in statuses
    assert billed() <= 600 and engines[0].produced + 10 * statuses.count(200) <= 600
    assert UsageEvent.objects.filter(status=200).first().output_tokens == 4 * 48, "every completion is billed"


def test_every_prompt_of_a_completions_list_is_reserved_for(gateway_url, stack):
    dep, engines = stack["deployment"]("list-dep")
    stack["endpoint"]("lister", dep)
    secret = stack["key"](monthly_token_budget=600)
    wait_for_model(gateway_url, secret, "lister")
    # The call: 16 prompts in one call billed 832 tokens on a 600-token budget.
    prompts = [f"ticket {i}" for i in range(16)]
    refused = call(
        gateway_url, secret, {"model": "lister", "prompt": prompts, "max_tokens": 48}, "/v1/completions"
    )
    assert refused.status_code == 429 and engines[0].requests == []
    answered = call(
        gateway_url, secret, {"model": "lister", "prompt": prompts[:4], "max_tokens": 48}, "/v1/completions"
    )
    assert answered.status_code == 200, answered.text
    assert len(answered.json()["choices"]) == 4 and answered.json()["model"] == "lister"
    assert answered.json()["usage"]["completion_tokens"] == 4 * 48
    assert billed() == answered.json()["usage"]["total_tokens"] <= 600


def test_max_completion_tokens_wins_over_max_tokens_and_is_reserved_for(gateway_url, stack):
    dep, engines = stack["deployment"]("mct-dep")
    stack["endpoint"]("precedence", dep)
    small = stack["key"](monthly_token_budget=300)
    wait_for_model(gateway_url, small, "precedence")
    # The call: max_tokens=1 with max_completion_tokens=300 billed 337 tokens on a 300-token budget.
    body = {"model": "precedence", "messages": MESSAGES, "max_tokens": 1, "max_completion_tokens": 300}
    assert call(gateway_url, small, body).status_code == 429
    assert engines[0].requests == []
    large = stack["key"](monthly_token_budget=10_000)
    answer = call(gateway_url, large, body)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 300, "as vLLM does"
    assert billed() == 310


def test_without_a_limit_a_completion_is_reserved_up_to_the_end_of_the_context(gateway_url, stack):
    dep, _ = stack["deployment"]("ctx-dep")  # max_model_len 512
    stack["endpoint"]("open-ended", dep)
    secret = stack["key"](monthly_token_budget=500)
    wait_for_model(gateway_url, secret, "open-ended")
    assert call(gateway_url, secret, {"model": "open-ended", "messages": MESSAGES}).status_code == 429
    roomy = stack["key"](monthly_token_budget=512)
    answer = call(gateway_url, roomy, {"model": "open-ended", "messages": MESSAGES})
    assert answer.status_code == 200 and answer.json()["usage"]["total_tokens"] == 512


def test_n_above_the_cap_is_refused_naming_the_param(gateway_url, stack):
    dep, engines = stack["deployment"]("cap-dep")
    stack["endpoint"]("capped", dep)  # max_n 8
    stack["endpoint"]("wide", dep, max_n=128)  # the platform's ceiling (16) still applies
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "wide")
    for model, n in (("capped", 9), ("wide", 17)):
        response = call(gateway_url, secret, {"model": model, "messages": MESSAGES, "n": n, "max_tokens": 1})
        assert response.status_code == 400 and response.json()["error"]["param"] == "n", response.text
    assert (
        call(
            gateway_url, secret, {"model": "capped", "messages": MESSAGES, "n": 8, "max_tokens": 1}
        ).status_code
        == 200
    )
    assert [r["n"] for r in engines[0].requests] == [8]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("logprobs_everything", True, "unknown_parameter"),
        ("priority", -100, "unknown_parameter"),
        ("chat_template", "{{ 'x' * 100000 }}", "unknown_parameter"),
        ("max_tokens", "48", "invalid_type"),
        ("n", 0, "invalid_value"),
    ],
)
def test_a_field_the_gateway_does_not_know_or_a_bad_value_is_a_400_naming_it(
    gateway_url, stack, field, value, code
):
    dep, engines = stack["deployment"]("strict-dep")
    stack["endpoint"]("strict", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "strict")
    response = call(gateway_url, secret, {"model": "strict", "messages": MESSAGES, field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", field, code)
    assert engines[0].requests == [], "nothing reached the engine"


def test_streamed_completions_are_all_metered_when_the_client_leaves_early(gateway_url, stack):
    dep, engines = stack["deployment"]("multi-stream-dep", chunk_delay=0.02)
    stack["endpoint"]("multi-stream", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "multi-stream")
    body = {"model": "multi-stream", "messages": MESSAGES, "n": 3, "max_tokens": 200, "stream": True}
    received = 0
    with httpx.stream(
        "POST",
        f"{gateway_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {secret}"},
    ) as response:
        for line in response.iter_lines():
            received += line.startswith("data: {")
            if received >= 30:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not usage.flush():
        time.sleep(0.2)
    event = UsageEvent.objects.get()
    assert event.status == 499
    assert received <= event.output_tokens <= engines[0].produced, (
        "billed what every choice produced, not one choice's count"
    )


def test_a_request_larger_than_what_is_left_says_so_and_how_to_fit(gateway_url, stack):
    dep, _ = stack["deployment"]("left-dep")
    stack["endpoint"]("left", dep)
    secret = stack["key"](monthly_token_budget=200)
    wait_for_model(gateway_url, secret, "left")
    response = call(gateway_url, secret, {"model": "left", "messages": MESSAGES, "max_tokens": 300})
    error = response.json()["error"]
    assert (
        response.status_code == 429
        and error["code"] == "insufficient_quota"
        and error["param"] == "max_tokens"
    )
    assert "could use up to" in error["message"] and "lower max_tokens" in error["message"]
    assert "used up" not in error["message"], "nothing was used"
    # Once the month's tokens are spent, it says that instead.
    key = ApiKey.objects.get(monthly_token_budget=200)
    redis = keystate.client()
    (counter,) = [name for name in redis.scan_iter(f"gw:bt:{key.key_id}:*")] or [None]
    month = time.strftime("%Y%m", time.gmtime())
    redis.set(counter or f"gw:bt:{key.key_id}:{month}", 200, ex=3600)
    response = call(gateway_url, secret, {"model": "left", "messages": MESSAGES, "max_tokens": 1})
    assert response.status_code == 429 and "used up" in response.json()["error"]["message"]
    assert int(response.headers["retry-after"]) > 0


def test_a_money_budget_stops_spending_at_the_budget(gateway_url, stack):
    dep, _ = stack["deployment"]("money-dep")
    stack["endpoint"]("priced", dep, price=("1000", "1000"))  # 0.001 per token
    secret = stack["key"](monthly_budget=Decimal("0.50"))
    wait_for_model(gateway_url, secret, "priced")
    statuses = [
        call(gateway_url, secret, {"model": "priced", "messages": MESSAGES, "max_tokens": 20}).status_code
        for _ in range(25)
    ]  # 30 tokens (0.03) each: 0.75 if nothing stopped them
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    usage.flush()
    spent = sum(e.cost for e in UsageEvent.objects.all())
    assert Decimal("0.30") < spent <= Decimal("0.50")


def test_a_tokens_per_minute_limit_stops_a_key_within_the_minute(gateway_url, stack):
    dep, _ = stack["deployment"]("tpm-dep")
    stack["endpoint"]("per-minute", dep)
    secret = stack["key"](tpm_limit=400)
    wait_for_model(gateway_url, secret, "per-minute")
    responses = [
        call(gateway_url, secret, {"model": "per-minute", "messages": MESSAGES, "max_tokens": 50})
        for _ in range(12)
    ]  # 60 tokens each: 720 if nothing stopped them
    refused = [r for r in responses if r.status_code == 429]
    assert responses[0].status_code == 200 and refused, [r.status_code for r in responses]
    assert "tokens per minute" in refused[0].json()["error"]["message"]
    assert 1 <= int(refused[0].headers["retry-after"]) <= 60
    too_big = call(gateway_url, secret, {"model": "per-minute", "messages": MESSAGES, "max_tokens": 450})
    assert too_big.status_code == 429
    assert "more than the limit of 400 tokens per minute" in too_big.json()["error"]["message"]


def test_a_request_that_outlives_its_minute_leaves_no_counter_without_expiry(gateway_url, stack):
    dep, _ = stack["deployment"]("long-dep", chunk_delay=0.05)
    stack["endpoint"]("long", dep)
    secret = stack["key"](tpm_limit=100_000, monthly_token_budget=100_000, rpm_limit=100)
    wait_for_model(gateway_url, secret, "long")
    key_id = ApiKey.objects.get().key_id
    body = {"model": "long", "messages": MESSAGES, "max_tokens": 40, "stream": True}
    streaming = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gateway_url}/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response:
            for _ in response.iter_bytes():
                streaming.set()

    client = threading.Thread(target=stream)
    client.start()
    assert streaming.wait(10)
    redis = keystate.client()
    per_minute = [name for name in counters(key_id) if name.startswith("gw:tpm:")]
    assert per_minute, "admission reserved in this minute's counter"
    redis.delete(*per_minute)  # what the end of the minute does to it
    client.join(20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not usage.flush():
        time.sleep(0.1)  # settled once the event is on the stream
    left = counters(key_id)
    assert not [name for name in left if name.startswith("gw:tpm:")], f"re-created after its minute: {left}"
    assert left and all(ttl > 0 for ttl in left.values()), left


def test_every_counter_a_request_touches_expires(gateway_url, stack):
    dep, _ = stack["deployment"]("ttl-dep")
    stack["endpoint"]("ttl", dep, price=("1", "1"))
    secret = stack["key"](
        rpm_limit=100, tpm_limit=100_000, monthly_token_budget=100_000, monthly_budget=Decimal("5")
    )
    wait_for_model(gateway_url, secret, "ttl")
    assert (
        call(gateway_url, secret, {"model": "ttl", "messages": MESSAGES, "max_tokens": 3}).status_code == 200
    )
    left = counters(ApiKey.objects.get().key_id)
    assert {name.split(":")[1] for name in left} == {"rpm", "tpm", "bt", "bm"}
    assert all(ttl > 0 for ttl in left.values()), left
