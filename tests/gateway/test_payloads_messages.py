"""What a chat call's messages hand the template beyond their text (tool calls and their arguments, a
developer's tools, an assistant's reasoning) is bounded in depth and counted in the prompt as tools are; and
`metadata` is held to OpenAI's limits and never reaches the engine."""

from __future__ import annotations

import copy
import json
import random

import orjson
import pytest

from serving.gateway import images, intake
from serving.gateway.errors import PayloadError
from serving.gateway.payloads import CHAT_TEMPLATE_TOKENS
from serving.gateway.routing import EndpointInfo, Route
from tests.gateway.test_payloads import CHAT, deep, pretty, random_value, refusal, shape_of, tool_with

USER = {"role": "user", "content": "What is the weather?"}


def called(arguments: object, **extra) -> dict:
    """An assistant message that called ``f`` with these arguments (OpenAI's: JSON text)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}, **extra}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def chat(*messages: dict) -> dict:
    return {**CHAT, "messages": [USER, *messages]}


def nested_text(levels: int, inner: str = "{}") -> str:
    """JSON text of an object nesting ``levels`` objects, itself the first."""
    return '{"a":' * (levels - 1) + inner + "}" * (levels - 1)


# Each nests 65 levels counted from the message's value (`tool_calls`: the call, its function and its
# arguments are levels 2-4); 64 is the most, as for `tools`.
TOO_DEEP = {
    "developer tools": (
        {"role": "developer", "content": "x", "tools": [tool_with(parameters=deep(62))]},
        "messages[1].tools",
    ),
    "a tool call's other keys": (called("{}", extra=deep(63)), "messages[1].tool_calls"),
    "reasoning as an object": (
        {"role": "assistant", "content": "x", "reasoning": deep(65)},
        "messages[1].reasoning",
    ),
    "arguments as JSON text": (called(nested_text(62)), "messages[1].tool_calls[0].function.arguments"),
    "arguments only Python reads": (
        called(nested_text(62, '{"x":NaN}')),
        "messages[1].tool_calls[0].function.arguments",
    ),
    "arguments past every parser's recursion": (
        called("[" * 5000 + "]" * 5000),
        "messages[1].tool_calls[0].function.arguments",
    ),
}


@pytest.mark.parametrize("case", sorted(TOO_DEEP))
def test_a_message_value_nested_past_64_levels_is_refused_naming_where(case):
    message, param = TOO_DEEP[case]
    error = refusal("chat", chat(message))
    assert error.param == param and "64 levels" in error.message, error.message


def test_message_values_of_64_levels_pass():
    for message in (
        {"role": "developer", "content": "x", "tools": [tool_with(parameters=deep(61))]},
        called(nested_text(61)),
        {"role": "assistant", "content": "x", "reasoning": deep(64)},
    ):
        assert shape_of("chat", chat(message)).choices == 1


def test_tool_call_arguments_must_be_json_text_as_openai_and_vllm_take_them():
    """vLLM 0.32's request model refuses an object there too, but only once the engine has it."""
    error = refusal("chat", chat(called({"city": "Paris"})))
    assert (error.param, error.code) == ("messages[1].tool_calls[0].function.arguments", "invalid_type")


def test_arguments_that_are_not_json_pass_as_the_engine_takes_them_for_an_empty_object():
    """vLLM keeps a conversation with a malformed call in its history going (it renders `{}`)."""
    body = chat(called("{not json"), {"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    assert shape_of("chat", body).choices == 1


def test_plain_text_messages_add_nothing_to_the_prompt_bound():
    body = chat({"role": "assistant", "content": "Sunny.", "name": "bot"}, USER)
    assert shape_of("chat", body, size=500).prompts == (500 + CHAT_TEMPLATE_TOKENS,)


def vllm_parsed(messages: list) -> list:
    """The messages as vLLM 0.32 hands them to the template: each tool call's arguments parsed."""
    parsed = copy.deepcopy(messages)
    for message in parsed:
        for call in message.get("tool_calls") or ():
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return parsed


def test_the_prompt_bound_covers_tool_calls_and_reasoning_as_a_template_pretty_prints_them():
    """A template may render a tool call's arguments (parsed) or the whole `tool_calls` with
    `tojson(indent=4)`, and a reasoning object as it is: the bound counts what either adds to the body."""
    rng = random.Random(11)
    for _ in range(200):
        arguments = {"q": random_value(rng, rng.randint(1, 10)), "r": random_value(rng, 6)}
        reasoning = {"steps": random_value(rng, 8)}
        messages = [
            USER,
            {**called(json.dumps(arguments, ensure_ascii=rng.random() < 0.5)), "reasoning": reasoning},
        ]
        body = {**CHAT, "messages": messages}
        size = len(orjson.dumps(body))
        counted = shape_of("chat", body, size=size).prompts[0] - size - CHAT_TEMPLATE_TOKENS
        calls, rendered = messages[1]["tool_calls"], vllm_parsed(messages)[1]["tool_calls"]
        whole = pretty(rendered) - len(orjson.dumps(calls))
        alone = pretty(arguments) - len(orjson.dumps(calls[0]["function"]["arguments"]))
        grown = pretty(reasoning) - len(orjson.dumps(reasoning))
        assert max(whole, alone) + grown <= counted, (arguments, reasoning)
        assert counted <= 2 * (whole + grown) + 64, (
            "a call with tool history is not reserved the whole context"
        )


def test_tool_call_arguments_that_a_template_would_render_as_hundreds_of_megabytes_are_refused():
    """A megabyte of JSON text: zeros 56 levels down, which pretty-printed would make 125 MB of prompt."""
    wide: object = [0] * 500_000
    for _ in range(56):
        wide = [wide]
    error = refusal("chat", chat(called(json.dumps({"x": wide}, separators=(",", ":")))))
    assert error.param == "messages[1].tool_calls[0].function.arguments" and "chat template" in error.message


# --- metadata ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": {"nested": "v"}},
        ["k", "v"],
        "k=v",
    ],
)
def test_metadata_past_openais_limits_is_refused_naming_it(metadata):
    assert refusal("chat", {**CHAT, "metadata": metadata}).param == "metadata"


def test_metadata_within_openais_limits_is_taken_and_not_sent_to_the_engine():
    """vLLM 0.32's requests have no `metadata` field: it would only log it as ignored, on a shared engine."""
    endpoint = EndpointInfo("m", 1, (Route(1, "d", "d", "", 1),), None, 0.0, 0.0, 4096)
    largest = {f"{i:02}" + "k" * 62: "v" * 512 for i in range(16)}
    for metadata in (largest, {}, None):
        payload = {**CHAT, "metadata": metadata}
        assert intake.check("chat", payload, 10_000, endpoint, "m").choices == 1
        assert payload == CHAT


@pytest.mark.parametrize("content", [{"type": "text", "text": "hi"}, {"a": {"b": [1, 2]}}, 7, True])
def test_a_message_content_neither_text_nor_parts_is_refused(content):
    """OpenAI's content is a string or an array of parts (or null, beside tool calls); vLLM took an object as
    parts, reading its keys, so the gateway let through what neither it nor the engine renders."""
    with pytest.raises(PayloadError) as refused:
        images.inspect([{"role": "user", "content": "ok"}, {"role": "user", "content": content}])
    assert refused.value.param == "messages[1].content" and refused.value.code == "invalid_type"


@pytest.mark.parametrize("content", ["text", None, [{"type": "text", "text": "hi"}]])
def test_text_parts_and_no_content_are_taken(content):
    assert images.inspect([{"role": "assistant", "content": content}]).number == 0


def test_openais_storage_and_service_tier_are_taken_and_not_sent_to_the_engine():
    """vLLM 0.32's chat requests have neither field (its response has a service tier): it only logged them as
    ignored, on an engine other teams share."""
    endpoint = EndpointInfo("m", 1, (Route(1, "d", "d", "", 1),), None, 0.0, 0.0, 4096)
    payload = {**CHAT, "store": True, "service_tier": "auto"}
    assert intake.check("chat", payload, 10_000, endpoint, "m").choices == 1
    assert payload == CHAT
