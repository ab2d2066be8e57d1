"""The gateway's body checks and worst-case reservations, exactly: what vLLM 0.32 can bill for a body is
never more than what the gateway reserves for it, and every field is on the allow-list and typed."""

from __future__ import annotations

import itertools
import json
import random

import orjson
import pytest

from serving.gateway import intake
from serving.gateway.errors import GatewayError
from serving.gateway.payloads import (
    CHAT_TEMPLATE_TOKENS,
    SPECIAL_TOKENS,
    PayloadError,
    Shape,
    check,
    worst_case,
    worst_usage,
)
from serving.gateway.routing import EndpointInfo, Route


def shape_of(kind: str, body: dict, size: int = 100, max_n: int = 8, max_inputs: int = 2048) -> Shape:
    return check(kind, body, size, max_n=max_n, max_inputs=max_inputs)


def refusal(kind: str, body: dict, **kwargs) -> PayloadError:
    with pytest.raises(PayloadError) as excinfo:
        shape_of(kind, body, **kwargs)
    return excinfo.value


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# --- What the engine can bill -------------------------------------------------------------------------
def engine_bill(prompt: int, n: int, limit: int | None, context: int) -> int:
    """vLLM's bill for one prompt of ``prompt`` tokens: refused past the context; else each of n completions
    stops at its limit or at the end of the context (get_max_tokens)."""
    if prompt > context:
        return 0
    return prompt + n * min(context if limit is None else limit, context - prompt)


def test_the_reservation_covers_every_prompt_length_the_bound_allows():
    for bound, n, limit, context in itertools.product(
        (0, 1, 7, 30, 64, 100), (0, 1, 2, 5), (None, 1, 10, 64), (16, 64)
    ):
        if limit is not None and limit > context:
            continue  # the engine refuses it outright
        tokens, _ = worst_case(Shape(prompts=(bound,), choices=n, per_choice=limit), context)
        exact = max(engine_bill(p, n, limit, context) for p in range(bound + 1))
        assert tokens == exact, (bound, n, limit, context)


def test_money_is_reserved_for_the_costliest_prompt_length_whichever_price_is_higher():
    for input_price, output_price in ((1.0, 5.0), (50.0, 1.0), (0.0, 3.0), (2.0, 0.0)):
        for bound, n, limit in itertools.product((5, 40, 90), (1, 3), (None, 8, 30)):
            _, money = worst_case(
                Shape(prompts=(bound,), choices=n, per_choice=limit), 64, input_price, output_price
            )
            exact = max(
                input_price * p + output_price * (engine_bill(p, n, limit, 64) - p)
                for p in range(min(bound, 64) + 1)
            )
            assert exact <= money < exact + 1, (input_price, output_price, bound, n, limit)


def test_a_timed_out_request_is_billed_the_split_of_its_worst_case():
    """forwarding.py bills an engine that did not answer in time at worst_usage: its tokens, priced, are
    worst_case's (the reservation) exactly, whichever price is higher."""
    for prices in ((0.0, 0.0), (1.0, 5.0), (50.0, 1.0)):
        for bounds, n, limit in itertools.product(((5,), (40, 90), (100,)), (1, 3), (None, 8, 30)):
            shape = Shape(prompts=bounds, choices=n, per_choice=limit)
            tokens, money = worst_case(shape, 64, *prices)
            prompt, completion = worst_usage(shape, 64, *prices)
            if prices == (0.0, 0.0):
                assert prompt + completion == tokens, (bounds, n, limit)
            else:
                assert prices[0] * prompt + prices[1] * completion == money, (prices, bounds, n, limit)
                assert prompt + completion <= tokens


def test_n_completions_of_48_tokens_reserve_n_times_48():
    shape = shape_of("chat", {**CHAT, "n": 8, "max_tokens": 48}, size=100, max_n=8)
    assert (shape.choices, shape.per_choice) == (8, 48)
    assert worst_case(shape, 2048)[0] == 100 + CHAT_TEMPLATE_TOKENS + 8 * 48


def test_every_prompt_of_a_completions_list_is_reserved_for():
    shape = shape_of("completion", {"model": "m", "prompt": ["one two", "three"], "max_tokens": 48})
    assert shape.prompts == (7 + SPECIAL_TOKENS, 5 + SPECIAL_TOKENS)
    assert worst_case(shape, 2048)[0] == 7 + 5 + 2 * SPECIAL_TOKENS + 2 * 48
    token_lists = shape_of("completion", {"model": "m", "prompt": [[1, 2, 3], [4]], "n": 2})
    assert (token_lists.prompts, token_lists.per_choice) == ((3, 1), 16), "vLLM's default of 16 tokens"
    one_token_list = shape_of("completion", {"model": "m", "prompt": [5, 6, 7, 8]})
    assert one_token_list.prompts == (4,)


def test_max_completion_tokens_wins_over_max_tokens_as_in_vllm():
    assert shape_of("chat", {**CHAT, "max_tokens": 1, "max_completion_tokens": 300}).per_choice == 300
    assert shape_of("chat", {**CHAT, "max_tokens": 5, "max_completion_tokens": None}).per_choice == 5
    assert shape_of("chat", CHAT).per_choice is None, "no limit: up to the end of the context"


def test_echo_with_no_new_tokens_still_reserves_the_one_vllm_generates():
    assert (
        shape_of("completion", {"model": "m", "prompt": "x", "echo": True, "max_tokens": 0}).per_choice == 1
    )


def test_best_of_and_beam_search_reserve_for_every_candidate():
    assert shape_of("completion", {"model": "m", "prompt": "x", "n": 2, "best_of": 5}).choices == 5
    assert shape_of("chat", {**CHAT, "n": 4, "use_beam_search": True}).choices == 4


def test_an_embedding_call_reserves_each_input_and_no_output():
    shape = shape_of("embedding", {"model": "e", "input": ["ab", "cdé"], "encoding_format": "base64"})
    assert shape.prompts == (2 + SPECIAL_TOKENS, 4 + SPECIAL_TOKENS) and shape.choices == 0
    assert worst_case(shape, 512) == (6 + 2 * SPECIAL_TOKENS, 0)


def test_each_prompt_counts_at_most_the_context():
    shape = shape_of("completion", {"model": "m", "prompt": ["word " * 1000], "max_tokens": 10})
    assert worst_case(shape, 512)[0] == 512, "a longer prompt is refused by the engine; up to L-10 plus 10"


# --- What the gateway refuses --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field",
    [
        "foo",
        "priority",
        "vllm_xargs",
        "chat_template",
        "request_id",
        "kv_transfer_params",
        "mm_processor_kwargs",
        "best_of",
    ],
)
def test_a_field_off_the_chat_allow_list_is_refused_naming_it(field):
    error = refusal("chat", {**CHAT, field: 1})
    assert (error.param, error.code) == (field, "unknown_parameter")
    assert error.message == f"Unrecognized request argument supplied: {field}"


def test_prompt_embeddings_are_refused_on_completions():
    assert (
        refusal("completion", {"model": "m", "prompt": "x", "prompt_embeds": "AAAA"}).param == "prompt_embeds"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "10"),
        ("max_tokens", 0),
        ("max_tokens", True),
        ("max_tokens", 1.5),
        ("n", -1),
        ("n", "2"),
        ("max_completion_tokens", 0),
        ("temperature", "hot"),
        ("top_p", 2),
        ("stream", "yes"),
        ("top_logprobs", 21),
        ("stop", ["a"] * 17),
        # Matched at every decoding step in a shared engine: each a phrase, not a page.
        ("stop", "x" * 1001),
        ("stop", ["ok", "x" * 1001]),
        ("bad_words", ["x" * 1001]),
        ("logit_bias", [1]),
        # Applied at every decoding step of a shared engine, and rebuilt entry by entry on each batch change.
        ("logit_bias", {str(token): 1 for token in range(1025)}),
        ("logit_bias", {"the": 5}),
        ("logit_bias", {"-1": 5}),
        ("logit_bias", {"42": "5"}),
        ("logit_bias", {"42": 101}),
        ("seed", 2**64),
        ("cache_salt", ""),
    ],
)
def test_a_cost_bearing_or_typed_field_with_a_bad_value_is_refused_naming_it(field, value):
    assert refusal("chat", {**CHAT, field: value}).param == field


def test_a_bounded_logit_bias_of_token_ids_passes():
    biases = {str(token): -100 if token % 2 else 100.0 for token in range(1024)}
    assert shape_of("chat", {**CHAT, "logit_bias": biases}, size=20_000).choices == 1


def test_n_and_best_of_above_the_cap_are_refused():
    assert refusal("chat", {**CHAT, "n": 9}, max_n=8).param == "n"
    assert refusal("completion", {"model": "m", "prompt": "x", "best_of": 9}, max_n=8).param == "best_of"
    assert shape_of("chat", {**CHAT, "n": 8}, max_n=8).choices == 8


def test_required_fields_and_their_shapes_are_checked():
    assert refusal("chat", {"model": "m"}).param == "messages"
    assert refusal("chat", {"model": "m", "messages": []}).param == "messages"
    assert refusal("chat", {"model": "m", "messages": ["hi"]}).param == "messages"
    assert refusal("completion", {"model": "m"}).param == "prompt"
    assert refusal("completion", {"model": "m", "prompt": []}).param == "prompt"
    assert refusal("completion", {"model": "m", "prompt": ["a", [1]]}).param == "prompt"
    assert refusal("embedding", {"model": "e", "input": [True]}).param == "input"


def test_more_prompts_or_inputs_than_allowed_are_refused():
    assert refusal("completion", {"model": "m", "prompt": ["x"] * 5}, max_inputs=4).param == "prompt"
    assert refusal("embedding", {"model": "e", "input": [[1]] * 5}, max_inputs=4).param == "input"


def test_stream_options_need_a_stream_and_say_what_usage_the_client_gets():
    assert refusal("chat", {**CHAT, "stream_options": {"include_usage": True}}).param == "stream_options"
    assert refusal("chat", {**CHAT, "stream": True, "stream_options": {"x": 1}}).param == "stream_options.x"
    quiet = shape_of("chat", {**CHAT, "stream": True})
    asked = shape_of("chat", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    every = shape_of(
        "chat",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    assert (quiet.include_usage, asked.include_usage, asked.continuous_usage, every.continuous_usage) == (
        False,
        True,
        False,
        True,
    )


def test_embeddings_take_only_their_own_fields():
    assert refusal("embedding", {"model": "e", "input": "x", "stream": True}).param == "stream"
    assert (
        refusal("embedding", {"model": "e", "input": "x", "encoding_format": "npy"}).param
        == "encoding_format"
    )


def test_prompt_logprobs_or_an_echo_with_logprobs_past_the_bound_are_refused_before_the_engine(settings):
    """vLLM answers 1 + k log-probabilities per prompt token (completions: in every choice): a long prompt
    would make an answer of gigabytes, read whole by the gateway."""
    settings.GATEWAY_MAX_PROMPT_LOGPROBS = 10_000
    endpoint = EndpointInfo("m", 1, (Route(1, "d", "d", "", 1),), None, 0.0, 0.0, 4096)
    long = "word " * 1000  # a bound of 5,000 + special tokens

    def shape(kind: str, body: dict):
        data = orjson.dumps({"model": "m", **body})
        return intake.check(kind, orjson.loads(data), len(data), endpoint, "m")

    def refused(kind: str, body: dict) -> dict:
        with pytest.raises(GatewayError) as excinfo:
            shape(kind, body)
        error = excinfo.value
        assert error.status == 400 and "log-probabilities" in error.message
        return error.param

    assert shape("completion", {"prompt": long, "prompt_logprobs": 0}).choices == 1, "1 per token: within"
    assert refused("completion", {"prompt": long, "prompt_logprobs": 1}) == "prompt_logprobs"
    assert refused("completion", {"prompt": long, "prompt_logprobs": 0, "n": 2}) == "prompt_logprobs"
    assert refused("completion", {"prompt": [long, long], "prompt_logprobs": 0}) == "prompt_logprobs"
    assert refused("completion", {"prompt": long, "echo": True, "logprobs": 1}) == "echo"
    assert shape("completion", {"prompt": long, "echo": True}).choices == 1, "no logprobs: only the text"
    assert shape("completion", {"prompt": long, "logprobs": 5}).choices == 1, "the completion's only"
    messages = [{"role": "user", "content": long}]
    assert refused("chat", {"messages": messages, "prompt_logprobs": 1}) == "prompt_logprobs"
    assert shape("chat", {"messages": messages, "prompt_logprobs": 0}).choices == 1
    assert (
        shape("chat", {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 20}).choices == 1
    )


# --- What a chat template and a grammar read ----------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tool_with(**function) -> dict:
    return {"type": "function", "function": {"name": "f", **function}}


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        ([TOOL] * 1025, "tools"),
        ([1], "tools[0]"),
        ([{"type": "custom", "custom": {"name": "f"}}], "tools[0]"),
        ([{"function": {"name": "f"}}], "tools[0]"),
        ([TOOL, {"type": "function"}], "tools[1]"),
        ([{"type": "function", "function": {}}], "tools[0].function.name"),
        ([tool_with(name="x" * 65)], "tools[0].function.name"),
        ([tool_with(name=7)], "tools[0].function.name"),
        ([tool_with(parameters="{}")], "tools[0].function.parameters"),
        ([tool_with(description=["d"])], "tools[0].function.description"),
        ([tool_with(strict="yes")], "tools[0].function.strict"),
    ],
)
def test_a_tool_that_is_not_an_openai_function_tool_is_refused_naming_where(tools, param):
    assert refusal("chat", {**CHAT, "tools": tools}).param == param


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ("sometimes", "tool_choice"),
        ({"type": "function"}, "tool_choice"),
        ({"type": "allowed_tools", "allowed_tools": {}}, "tool_choice"),
        ({"type": "function", "function": {"name": 7}}, "tool_choice.function.name"),
    ],
)
def test_a_tool_choice_vllm_cannot_take_is_refused_naming_it(choice, param):
    assert refusal("chat", {**CHAT, "tools": [TOOL], "tool_choice": choice}).param == param


def test_tools_and_tool_choices_as_the_openai_sdk_sends_them_pass():
    full = tool_with(name="a-b_9" * 12 + "abcd", description="d", parameters={"type": "object"}, strict=True)
    for choice in ("none", "auto", "required", {"type": "function", "function": {"name": "f"}}, None):
        assert shape_of("chat", {**CHAT, "tools": [TOOL, full], "tool_choice": choice}).choices == 1


def deep(levels: int) -> dict:
    """An object nesting ``levels`` objects, itself the first."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# Each value nests 65 levels, its own object or array the first (64 is the most).
TOO_DEEP = {
    "tools": [tool_with(parameters=deep(62))],
    "tool_choice": {"type": "function", "function": {"name": "f", "x": deep(63)}},
    "chat_template_kwargs": {"k": deep(64)},
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": deep(63)}},
    "structured_outputs": {"json": deep(64)},
}


@pytest.mark.parametrize("field", sorted(TOO_DEEP))
def test_a_json_value_nested_past_64_levels_is_refused_before_the_engine_renders_it(field):
    error = refusal("chat", {**CHAT, field: TOO_DEEP[field]})
    assert error.param == field and "64 levels" in error.message
    assert shape_of("chat", {**CHAT, "tools": [tool_with(parameters=deep(61))]}).choices == 1, "64: within"


def test_a_schema_of_openais_ten_nested_object_levels_passes_as_a_tool_and_a_response_format():
    """OpenAI's structured outputs allow 10 nested object levels: each written with a nullable `anyOf`."""
    schema: dict = {"type": "string", "enum": ["a", "b"]}
    for _ in range(10):
        schema = {
            "type": "object",
            "properties": {"x": {"anyOf": [schema, {"type": "null"}]}},
            "required": ["x"],
            "additionalProperties": False,
        }
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    body = {**CHAT, "tools": [tool_with(parameters=schema)], "response_format": response_format}
    assert shape_of("chat", body).choices == 1


def vllm_tools(tools: list) -> list:
    """The tools as vLLM hands them to the template: a function's missing description and parameters null."""
    return [
        {**tool, "function": {"description": None, "parameters": None, **tool["function"]}} for tool in tools
    ]


def pretty(value: object) -> int:
    """Its bytes as Llama 3's template renders it: transformers' `tojson(indent=4)`."""
    return len(json.dumps(value, indent=4, ensure_ascii=False).encode())


def random_value(rng: random.Random, depth: int) -> object:
    leaves = [0, -7, 10**15, 1e15, -2.2250738585072014e-308, 0.1, True, None, "", 'a"b\\n', "é€😀", "\x07"]
    if depth <= 1 or rng.random() < 0.3:
        return rng.choice(leaves)
    width = rng.choice([0, 1, 2, 6] if depth < 5 else [0, 1, 1, 2])
    if rng.random() < 0.5:
        return [random_value(rng, depth - 1) for _ in range(width)]
    return {
        rng.choice(["k", "ké", "\n", f"{i}"]) + str(i): random_value(rng, depth - 1) for i in range(width)
    }


def test_the_prompt_bound_covers_tools_and_template_variables_as_a_template_pretty_prints_them():
    """A template that renders `tools | tojson(indent=4)` makes a prompt larger than the body: a newline and
    an indent per element at every level, a float in its longest form, vLLM's nulls for what was left out.
    The bound (before the context clips it) counts all of it, so admission reserves enough."""
    rng = random.Random(7)
    for _ in range(300):
        tools = [
            tool_with(parameters={"type": "object", "properties": random_value(rng, rng.randint(1, 12))})
            for _ in range(rng.randint(1, 3))
        ]
        kwargs = {"enable_thinking": True, "extra": random_value(rng, 8)}
        body = {**CHAT, "tools": tools, "chat_template_kwargs": kwargs}
        size = len(orjson.dumps(body))
        shape = shape_of("chat", body, size=size)
        grown = (
            pretty(vllm_tools(tools)) - len(orjson.dumps(tools)) + pretty(kwargs) - len(orjson.dumps(kwargs))
        )
        counted = shape.prompts[0] - size - CHAT_TEMPLATE_TOKENS
        assert grown <= counted, (tools, kwargs)
        assert counted <= 2 * grown, "close enough that a call with tools is not reserved the whole context"


def test_tools_that_a_template_would_render_as_hundreds_of_megabytes_are_refused():
    """A megabyte of zeros 60 levels down renders, pretty-printed, as 125 MB: the engine would render and
    tokenise all of it (minutes of CPU) before refusing it, unbilled, as longer than its context."""
    wide: object = [0] * 500_000
    for _ in range(56):
        wide = [wide]
    error = refusal("chat", {**CHAT, "tools": [tool_with(parameters={"type": "object", "x": wide})]})
    assert error.param == "tools" and "chat template" in error.message
    kwargs = refusal("chat", {**CHAT, "chat_template_kwargs": {"tools": [wide]}})
    assert kwargs.param == "chat_template_kwargs"


# --- OpenAI's fields for its own services ---------------------------------------------------------------------
OPENAIS_OWN = {
    "safety_identifier": "user-" + "9" * 123,
    "prompt_cache_key": "k" * 64,
    "prompt_cache_retention": "24h",
    "verbosity": "low",
}


def test_openais_own_fields_are_taken_and_not_sent_to_the_engine():
    """The openai SDK sends them; vLLM 0.32 has no such fields, and a safety identifier names an end user."""
    endpoint = EndpointInfo("m", 1, (Route(1, "d", "d", "", 1),), None, 0.0, 0.0, 4096)
    payload = {**CHAT, **OPENAIS_OWN, "user": "u"}
    assert intake.check("chat", payload, 300, endpoint, "m").choices == 1
    assert payload == {**CHAT, "user": "u"}
    assert shape_of("chat", {**CHAT, "prompt_cache_retention": "in_memory"}).choices == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("safety_identifier", "u" * 129),
        ("safety_identifier", 5),
        ("prompt_cache_key", "k" * 65),
        ("prompt_cache_retention", "1h"),
        ("verbosity", "loud"),
    ],
)
def test_openais_own_fields_past_their_bounds_are_refused_naming_them(field, value):
    assert refusal("chat", {**CHAT, field: value}).param == field
