"""OpenAI compatibility and honest counters, with the official openai SDK where a client would use it:
errors in OpenAI's shape (the engine's too), the final usage chunk only when asked for, models.retrieve,
/metrics behind a scrape token, and refusals counted by reason."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import pytest

from serving.gateway.models import UsageEvent
from tests.gateway.conftest import METRICS_TOKEN, flush_settled, same_minute, wait_for_model
from tests.gateway.process import start_gateway, stop_gateway

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "Hello"}]


def client(base: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=20)


def scrape(base: str) -> str:
    return httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text


def refused(text: str, reason: str, status: int) -> float:
    pattern = (
        rf'portfolio_gateway_refused_total\{{reason="{reason}",status="{status}",team="([^"]*)"\}} (\S+)'
    )
    return sum(float(value) for _, value in re.findall(pattern, text))


# --- Errors -----------------------------------------------------------------------------------------
def test_embeddings_on_a_chat_endpoint_is_an_openai_error_not_the_engines_bare_answer(gateway_url, stack):
    dep, engines = stack["deployment"]("chat-only-dep")
    stack["endpoint"]("chatty", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "chatty")
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(gateway_url, secret).embeddings.create(model="chatty", input="x")
    assert excinfo.value.body["code"] == "unsupported_endpoint" and excinfo.value.body["param"] == "model"
    assert excinfo.value.request_id, "under the gateway's request id"
    assert engines[0].requests == []


def test_a_completion_with_max_tokens_null_is_sent_with_openais_default(gateway_url, stack):
    """The SDK sends `"max_tokens": null` for max_tokens=None: OpenAI's default of 16, which the gateway
    reserved; vLLM took the null for "to the end of the context" for each of n choices (then failed with a
    500 that billed nothing)."""
    dep, engines = stack["deployment"]("nulls-dep")
    stack["endpoint"]("nulls", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "nulls")
    answer = client(gateway_url, secret).completions.create(model="nulls", prompt="x", max_tokens=None, n=2)
    assert len(answer.choices) == 2
    assert "max_tokens" not in engines[0].requests[-1], engines[0].requests[-1]


def test_openais_own_fields_and_function_tools_from_the_sdk_are_taken_and_the_fields_not_sent_on(
    gateway_url, stack
):
    """Current openai SDKs send `safety_identifier`, `prompt_cache_key`, `prompt_cache_retention` and
    `verbosity` where a caller sets them: they were refused as unknown. Taken now, and dropped: vLLM 0.32 has no
    such fields (it logs each it ignores), and a safety identifier names an end user, for OpenAI's eyes only."""
    dep, engines = stack["deployment"]("openai-fields-dep")
    stack["endpoint"]("openai-fields", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "openai-fields")
    weather: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    sdk: Any = client(gateway_url, secret)  # typed params aside: the SDK sends what it is given
    answer = sdk.chat.completions.create(
        model="openai-fields",
        messages=MESSAGES,
        max_tokens=2,
        safety_identifier="a" * 64,
        prompt_cache_key="conversation-1",
        prompt_cache_retention="24h",
        verbosity="low",
        tools=[weather],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert len(answer.choices) == 1
    sent = engines[0].requests[-1]
    assert not {"safety_identifier", "prompt_cache_key", "prompt_cache_retention", "verbosity"} & sent.keys()
    assert sent["tools"] == [weather] and sent["tool_choice"]["function"]["name"] == "get_weather"
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.chat.completions.create(
            model="openai-fields",
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "x" * 65}}],
        )
    error: Any = excinfo.value.body
    assert error["param"] == "tools[0].function.name"
    assert len(engines[0].requests) == 1


def test_metadata_and_tool_call_history_from_the_sdk_are_bounded_and_metadata_not_sent_on(gateway_url, stack):
    """`metadata` is held to OpenAI's limits (16 pairs, 64-character keys, 512-character values) and dropped:
    vLLM 0.32 has no such field. A tool call in the history is JSON text that vLLM parses for the template:
    nested past 64 levels it is refused before the engine, naming where."""
    dep, engines = stack["deployment"]("metadata-dep")
    stack["endpoint"]("metadata", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "metadata")
    sdk: Any = client(gateway_url, secret)
    history: Any = [
        *MESSAGES,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    answer = sdk.chat.completions.create(
        model="metadata", messages=history, max_tokens=2, metadata={"ticket": "T-1", "k" * 64: "v" * 512}
    )
    assert len(answer.choices) == 1
    sent = engines[0].requests[-1]
    assert "metadata" not in sent and sent["messages"] == history
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.chat.completions.create(
            model="metadata", messages=MESSAGES, metadata={f"k{i}": "v" for i in range(17)}
        )
    assert excinfo.value.body["param"] == "metadata"
    history[1]["tool_calls"][0]["function"]["arguments"] = '{"a":' * 64 + "{}" + "}" * 64
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.chat.completions.create(model="metadata", messages=history)
    assert excinfo.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
    assert len(engines[0].requests) == 1


def test_a_clients_request_id_is_echoed_but_the_engine_gets_the_gateways_own(gateway_url, stack):
    """vLLM makes the X-Request-ID it receives its request id: a client naming another's (or the next of
    the gateway's counter) must not collide with it on a shared engine."""
    dep, engines = stack["deployment"]("ids-dep")
    stack["endpoint"]("ids", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "ids")
    for _ in range(2):
        response = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "ids", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "victim-1"},
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "victim-1"
    ids = engines[0].request_ids
    assert len(ids) == 2 and "victim-1" not in ids and ids[0] != ids[1] and all(ids)


def test_each_keys_prompts_get_a_prefix_cache_salt_of_their_own_that_no_client_can_choose(gateway_url, stack):
    """vLLM shares an engine's prefix cache between requests with the same salt: a caller able to hit the
    cache with another's prompt prefix could time its way to that prompt. The gateway salts every chat and
    completion with the key's id; a client's own salt is kept, inside its key's."""
    dep, engines = stack["deployment"]("salted-dep")
    stack["endpoint"]("salted", dep)
    first, second = stack["key"](), stack["key"]()
    wait_for_model(gateway_url, first, "salted")
    body = {"model": "salted", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    for secret, extra in ((first, {}), (second, {}), (second, {"cache_salt": "chosen"})):
        response = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={**body, **extra},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 200, response.text
    salts = [request["cache_salt"] for request in engines[0].requests]
    assert len(set(salts)) == 3 and all(salts)
    assert salts[2].startswith(salts[1] + ":"), "the client's salt within its key's"
    assert not salts[2].startswith(salts[0]), "never another key's"


def test_an_engine_lost_mid_answer_is_a_502_or_the_streams_end_never_a_gateway_500(gateway_url, stack):
    """An engine restarted or killed mid-answer closes its connection: a stream under way ends there with an
    error event in OpenAI's shape and a whole body (what was produced is metered), and an unstreamed call
    gets 502 upstream_error in OpenAI's shape; the usage rows say upstream_error, not the gateway's own 500."""
    dep, _ = stack["deployment"]("lost-dep", drop_after=2)
    stack["endpoint"]("lost", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "lost")
    body = {"model": "lost", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {secret}"}
    whole = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers)
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_error", whole.text
    received = b""
    with httpx.stream(
        "POST", f"{gateway_url}/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as stream:
        assert stream.status_code == 200
        for chunk in stream.iter_bytes():  # a body cut short would raise here
            received += chunk
    parts = received.split(b"\n\n")
    assert len(parts) == 5 and parts[3:] == [b"data: [DONE]", b""], received
    assert parts[2].startswith(b'data: {"error":{') and b'"code":"upstream_error"' in parts[2], received
    flush_settled()
    events = sorted(UsageEvent.objects.filter(endpoint="lost"), key=lambda e: e.stream)
    assert [(e.stream, e.status, e.error) for e in events] == [
        (False, 502, "upstream_error"),
        (True, 502, "upstream_error"),
    ]
    assert events[1].output_tokens == 2, "what was produced is metered"


def test_an_engine_error_in_any_shape_reaches_the_client_in_openais(gateway_url, stack):
    # An endpoint registered as an embedding model, on an engine that serves no embeddings: the engine
    # answers FastAPI's {"detail": "Not Found"}.
    dep, _ = stack["deployment"]("odd-dep", task="embedding")
    stack["endpoint"]("odd", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "odd")
    response = httpx.post(
        f"{gateway_url}/v1/embeddings",
        json={"model": "odd", "input": "x"},
        headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "trace-me-1"},
    )
    assert response.status_code == 404 and response.headers["x-request-id"] == "trace-me-1"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unsupported_endpoint"
    assert "detail" not in response.json()
    # vLLM's own error shape (an integer code, its own type names) is made OpenAI's too.
    chat_dep, _ = stack["deployment"]("short-dep")
    stack["endpoint"]("short", chat_dep)
    wait_for_model(gateway_url, secret, "short")
    with pytest.raises(openai.BadRequestError) as excinfo:
        client(gateway_url, secret).chat.completions.create(
            model="short", messages=MESSAGES, max_tokens=100_000
        )
    body = excinfo.value.body
    assert body["type"] == "invalid_request_error" and body["code"] == "upstream_error"
    assert body["param"] == "max_tokens" and "max_model_len=512" in body["message"]


# --- Streams ----------------------------------------------------------------------------------------
def test_a_stream_ends_with_a_usage_chunk_only_when_the_client_asks(gateway_url, stack):
    dep, _ = stack["deployment"]("usage-dep")
    stack["endpoint"]("usage-stream", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "usage-stream")
    sdk = client(gateway_url, secret)
    plain = list(
        sdk.chat.completions.create(model="usage-stream", messages=MESSAGES, max_tokens=6, stream=True)
    )
    assert plain and all(chunk.choices for chunk in plain), "every chunk has a choice to read"
    assert all(chunk.usage is None for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == "word " * 6
    asked = list(
        sdk.chat.completions.create(
            model="usage-stream",
            messages=MESSAGES,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == 6
    assert all(chunk.usage is None for chunk in asked[:-1]) and all(
        chunk.model == "usage-stream" for chunk in asked
    )
    flush_settled()
    assert sorted(e.output_tokens for e in UsageEvent.objects.all()) == [6, 6], "metered either way"


def test_a_completions_stream_of_several_prompts_is_metered_whole(gateway_url, stack):
    dep, _ = stack["deployment"]("cstream-dep")
    stack["endpoint"]("cstream", dep)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "cstream")
    chunks = list(
        client(gateway_url, secret).completions.create(
            model="cstream", prompt=["one two", "three"], n=2, max_tokens=5, stream=True
        )
    )
    assert len([c for c in chunks if c.choices]) == 2 * 2 * 5
    flush_settled()
    event = UsageEvent.objects.get()
    assert (event.input_tokens, event.output_tokens) == (3 + 2, 2 * 2 * 5)


# --- Models -----------------------------------------------------------------------------------------
def test_every_listed_model_can_be_retrieved_and_no_other(gateway_url, stack, other_team):
    dep, _ = stack["deployment"]("listed-dep")
    stack["endpoint"]("first", dep)
    stack["endpoint"]("second", dep)
    theirs, _ = stack["deployment"]("theirs-dep", owner=other_team)
    stack["endpoint"]("theirs", theirs, owner=other_team)
    secret = stack["key"]()
    scoped = stack["key"](scopes=["first"])
    wait_for_model(gateway_url, secret, "second")
    sdk = client(gateway_url, secret)
    for model in sdk.models.list():
        assert sdk.models.retrieve(model.id).id == model.id
    assert {m.id for m in sdk.models.list()} == {"first", "second"}
    for name, key in (("theirs", secret), ("nope", secret), ("second", scoped)):
        with pytest.raises(openai.NotFoundError) as excinfo:
            client(gateway_url, key).models.retrieve(name)
        assert excinfo.value.body["code"] == "model_not_found"


def test_an_unknown_path_or_method_is_a_404_in_openais_shape(gateway_url, stack):
    for method, path in [("POST", "/v1/nothing"), ("GET", "/v1/chat/completions"), ("POST", "/v1/models")]:
        response = httpx.request(method, f"{gateway_url}{path}")
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == {
            "message": f"Unknown path {method} {path}.",
            "type": "not_found_error",
            "param": None,
            "code": "not_found",
        }


# --- /metrics ---------------------------------------------------------------------------------------
def test_metrics_need_the_scrape_token(gateway_url, stack):
    assert httpx.get(f"{gateway_url}/metrics").status_code == 401
    assert httpx.get(f"{gateway_url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = httpx.get(f"{gateway_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200 and "portfolio_gateway_" in response.text


def test_without_a_scrape_token_configured_there_are_no_metrics(db, tmp_path):
    process, base = start_gateway(tmp_path / "gateway.log", PORTFOLIO_METRICS_TOKEN="")
    try:
        for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
            response = httpx.get(f"{base}/metrics", headers=headers)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    finally:
        stop_gateway(process)


def test_requests_the_gateway_refuses_are_counted_by_reason_without_key_material(gateway_url, stack):
    dep, _ = stack["deployment"]("refuse-dep")
    stack["endpoint"]("refusing", dep)
    secret = stack["key"](rpm_limit=1)
    wait_for_model(gateway_url, secret, "refusing")
    before = scrape(gateway_url)

    def post(key: str, body: dict) -> httpx.Response:
        return httpx.post(
            f"{gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    junk = "slm_abcdefghijkl_" + "z" * 43
    assert post(junk, {"model": "refusing"}).status_code == 401
    assert post(secret, {"model": "no-such-model", "messages": MESSAGES}).status_code == 404
    assert post(secret, {"model": "refusing", "messages": MESSAGES, "bogus": 1}).status_code == 400
    same_minute()  # the key's one request a minute, and the next one refused within the same minute
    assert post(secret, {"model": "refusing", "messages": MESSAGES, "max_tokens": 1}).status_code == 200
    assert post(secret, {"model": "refusing", "messages": MESSAGES, "max_tokens": 1}).status_code == 429
    after = scrape(gateway_url)
    for reason, status in (
        ("invalid_api_key", 401),
        ("model_not_found", 404),
        ("unknown_parameter", 400),
        ("rate_limit_exceeded", 429),
    ):
        assert refused(after, reason, status) == refused(before, reason, status) + 1, reason
    assert 'reason="model_not_found",status="404",team="support-ai"' in after
    assert "abcdefghijkl" not in after and secret.split("_")[1] not in after and "no-such-model" not in after
