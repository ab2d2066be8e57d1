"""The gateway's body checks and worst-case reservations, exactly: what vLLM 0.32 can bill for a body is
never more than what the gateway reserves for it, and every field is on the allow-list and typed."""

from __future__ import annotations

import itertools

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
