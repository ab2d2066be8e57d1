"""The request bodies the gateway forwards, and the most they can cost.

Contract: every field of a ``/v1`` body is on the route's allow-list (OpenAI's fields plus the vLLM
extensions the platform allows) and is type-checked here, with plain dict and type tests (no pydantic on
the hot path); an unknown field is refused naming it. The values a chat template or a structured-output
grammar reads (tools, response formats, messages' tool calls) are bounded by schemas.py. From what is left,
``worst_case`` works out the most tokens and money the engine can bill for the request, so that admission
reserves enough and concurrent requests can never together pass a limit or a budget.

The cost semantics are vLLM 0.32's (vllm/entrypoints/openai/{chat_completion,completion}/ protocol.py and
serving.py, serve/utils/api_utils.py: get_max_tokens):
- ``n`` completions per prompt (beam search returns ``n`` beams); usage bills every prompt once and the
  tokens of every completion;
- ``/v1/completions`` takes a string, a list of token ids, or a list of either, each element a prompt of
  its own; ``max_tokens`` defaults to 16 there, and ``echo`` with ``max_tokens=0`` still generates one;
- chat prefers ``max_completion_tokens`` to ``max_tokens``; with neither, a completion may run to the end
  of the context;
- a prompt longer than the context (``max_model_len``) is refused by the engine (nothing billed), and a
  completion stops at the end of the context: per sequence, prompt + completion <= max_model_len.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import repeat
from typing import NamedTuple

from serving.gateway import schemas
from serving.gateway.errors import PayloadError

# Upper bounds on a prompt's tokens, from its size in bytes: a token is at least one byte (byte-level
# tokenizers), plus what the engine adds: special tokens to a text prompt, the chat template's role markers
# and default system prompt to a conversation (whose JSON keys and quotes already count as bytes).
SPECIAL_TOKENS = 8
CHAT_TEMPLATE_TOKENS = 64
COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest default
MAX_LOGPROBS = 20  # vLLM's --max-logprobs default
INT64 = 2**63 - 1
INT32 = 2**31 - 1
# The most tokens of each kind a usage event stores (UsageEvent.input_tokens and output_tokens: PostgreSQL
# integers). A worst case billed for a timed-out request can be more (2,048 prompts of n completions on a
# long context), and an event past its columns would never be stored: it is billed at this.
USAGE_TOKENS_MAX = INT32


class Shape(NamedTuple):  # a tuple: made once per request, several times cheaper than a frozen dataclass
    """What a checked body asks of the engine: an upper bound on each prompt's tokens (before the context
    clips it), completions per prompt (0: embeddings), and the tokens of each (None: up to the context)."""

    prompts: tuple[int, ...]
    choices: int
    per_choice: int | None
    n: int = 1  # as the engine numbers choices: prompt i's completions are indices i*n .. i*n+n-1
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False


def worst_case(
    shape: Shape, max_model_len: int, input_micros: float = 0.0, output_micros: float = 0.0
) -> tuple[int, int]:
    """The most tokens, and money in micro-units, that the engine can bill for ``shape`` on a model with
    this context length and these prices per token.

    Per prompt of at most P tokens with n completions of at most m each (m <= L, the context): the bill is
    p + n * min(m, L - p) for the real prompt length p <= min(P, L). That grows with p up to L - m, and from
    there falls (or, when input costs more than n outputs, keeps growing) to P: so its maximum is at one of
    those two points.
    """
    length = max_model_len
    per_choice = length if shape.per_choice is None else min(shape.per_choice, length)
    n = shape.choices
    floor = max(0, length - per_choice)  # the longest prompt whose completions still get per_choice tokens
    priced = input_micros or output_micros
    tokens, money = 0, 0.0
    for bound in shape.prompts:  # written out, not with min()/max(): up to thousands of prompts per call
        top = bound if bound < length else length
        low = top if top < floor else floor
        rest = length - top
        out_low, out_top = n * per_choice, n * (per_choice if per_choice < rest else rest)
        tokens += max(low + out_low, top + out_top)
        if priced:
            money += max(
                input_micros * low + output_micros * out_low, input_micros * top + output_micros * out_top
            )
    return tokens, math.ceil(money)  # up: a reservation never falls short of the (rounded) bill


def worst_usage(
    shape: Shape, max_model_len: int, input_micros: float = 0.0, output_micros: float = 0.0
) -> tuple[int, int]:
    """The prompt and completion tokens of ``worst_case``'s bill (per prompt, the costlier of its two
    points, by money where priced, else by tokens): what a request is billed when an engine had it and what
    it produced is not known (forwarding.py: it did not answer in time). Each at most USAGE_TOKENS_MAX."""
    length = max_model_len
    per_choice = length if shape.per_choice is None else min(shape.per_choice, length)
    n = shape.choices
    floor = max(0, length - per_choice)
    priced = input_micros or output_micros
    prompt = completion = 0
    for bound in shape.prompts:
        top = min(bound, length)
        low = min(top, floor)
        out_low, out_top = n * per_choice, n * min(per_choice, length - top)
        if priced:
            at_low = (
                input_micros * low + output_micros * out_low >= input_micros * top + output_micros * out_top
            )
        else:
            at_low = low + out_low >= top + out_top
        prompt, completion = (
            (prompt + low, completion + out_low) if at_low else (prompt + top, completion + out_top)
        )
    return min(prompt, USAGE_TOKENS_MAX), min(completion, USAGE_TOKENS_MAX)


# --- Field checks ---------------------------------------------------------------------------------
Check = Callable[[str, object], None]


def _kind(name: str, expected: str) -> PayloadError:
    return PayloadError(f"`{name}` must be {expected}.", name, "invalid_type")


# Exact type tests (``type(v) is int``): JSON gives exactly these types, and a bool is then no integer.
def _boolean(name: str, value: object) -> None:
    if value is not None and type(value) is not bool:
        raise _kind(name, "true or false")


def _integer(low: int, high: int) -> Check:
    def check(name: str, value: object) -> None:
        if value is None:
            return
        if type(value) is not int:
            raise _kind(name, "an integer")
        if not low <= value <= high:
            raise PayloadError(f"`{name}` must be from {low} to {high}; got {value}.", name)

    return check


def _number(low: float, high: float) -> Check:
    def check(name: str, value: object) -> None:
        if value is None:
            return
        if type(value) is not float and type(value) is not int:
            raise _kind(name, "a number")
        if not low <= value <= high:
            raise PayloadError(f"`{name}` must be from {low:g} to {high:g}; got {value:g}.", name)

    return check


def _text(longest: int, shortest: int = 0) -> Check:
    def check(name: str, value: object) -> None:
        if value is None:
            return
        if type(value) is not str:
            raise _kind(name, "a string")
        if not shortest <= len(value) <= longest:
            raise PayloadError(f"`{name}` must have {shortest}-{longest} characters.", name)

    return check


def _one_of(*choices: str) -> Check:
    def check(name: str, value: object) -> None:
        if value is not None and value not in choices:
            raise PayloadError(f"`{name}` must be one of {', '.join(choices)}.", name)

    return check


def _object(name: str, value: object) -> None:
    if value is not None and not isinstance(value, dict):
        raise _kind(name, "an object")


def _list(longest: int, item: type | tuple[type, ...] | None = None, chars: int | None = None) -> Check:
    """An array of at most ``longest`` items of type ``item``, strings of at most ``chars`` each."""

    def check(name: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise _kind(name, "an array")
        if len(value) > longest:
            raise PayloadError(f"`{name}` may have at most {longest} items.", name)
        if item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise _kind(name, "an array of " + ("integers" if item is int else "strings"))
        if chars is not None and any(len(v) > chars for v in value):
            raise PayloadError(f"Each item of `{name}` may have at most {chars} characters.", name)

    return check


# A stop string is matched against the text's tail and a bad word against the tokens at every decoding
# step, inside an engine other teams share: short phrases, not pages.
WORD_CHARS = 1000


# The checks the other routes' allow-lists are made of too (rerank.py, audio.py).
text_check, integer_check, number_check, boolean_check = _text, _integer, _number, _boolean


def _stop(name: str, value: object) -> None:
    if value is None:
        return
    _list(16, str, WORD_CHARS)(name, [value] if isinstance(value, str) else value)


# A bias is added to its token's logit at every decoding step, and the engine rebuilds its table of every
# running request's biases, entry by entry, each time its batch changes: a map as large as the body allows
# (the whole vocabulary) would slow every team's calls on a shared engine.
LOGIT_BIASES = 1024


def _logit_bias(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _kind(name, "an object")
    if len(value) > LOGIT_BIASES:
        raise PayloadError(f"`{name}` may bias at most {LOGIT_BIASES} tokens.", name)
    for token, bias in value.items():
        if not (token.isascii() and token.isdecimal() and len(token) <= 10):
            raise PayloadError(f"Each key of `{name}` must be a token id; got {token[:32]!r}.", name)
        if type(bias) is not float and type(bias) is not int:
            raise _kind(name, "an object of numbers")
        if not -100 <= bias <= 100:
            raise PayloadError(f"Each bias in `{name}` must be from -100 to 100; got {bias:g}.", name)


def _metadata(name: str, value: object) -> None:
    """OpenAI's limits: at most 16 pairs, keys of at most 64 characters, values strings of at most 512."""
    _object(name, value)
    if isinstance(value, dict) and (
        len(value) > 16
        or not all(type(v) is str and len(k) <= 64 and len(v) <= 512 for k, v in value.items())
    ):
        message = "may hold at most 16 pairs, keys of at most 64 characters and string values of at most 512"
        raise PayloadError(f"`{name}` {message}.", name)


def _present(name: str, value: object) -> None:
    """Checked where the shape is worked out (messages, prompt, input)."""


_SAMPLING: dict[str, Check] = {
    # OpenAI's
    "model": _text(256),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    "seed": _integer(-INT64 - 1, INT64),
    "stop": _stop,
    "stream": _boolean,
    "stream_options": _object,
    "temperature": _number(0, 1e6),
    "top_p": _number(0, 1),
    "user": _text(256),
    "n": _integer(1, INT32),
    "response_format": schemas.nested,
    # vLLM's sampling extensions: none lets a request produce more than max_tokens per completion.
    "top_k": _integer(-1, INT32),
    "min_p": _number(0, 1),
    "repetition_penalty": _number(0, 1e6),
    "length_penalty": _number(-1e6, 1e6),
    "stop_token_ids": _list(256, int),
    "include_stop_str_in_output": _boolean,
    "ignore_eos": _boolean,
    "min_tokens": _integer(0, INT32),
    "skip_special_tokens": _boolean,
    "spaces_between_special_tokens": _boolean,
    "use_beam_search": _boolean,
    "truncate_prompt_tokens": _integer(-1, INT32),
    "bad_words": _list(256, str, WORD_CHARS),
    "allowed_token_ids": _list(10_000, int),
    "structured_outputs": schemas.nested,
    "prompt_logprobs": _integer(0, MAX_LOGPROBS),
    "return_token_ids": _boolean,
    "return_tokens_as_token_ids": _boolean,
    "cache_salt": _text(1024, 1),
    "add_special_tokens": _boolean,
}

CHAT: dict[str, Check] = {
    **_SAMPLING,
    "messages": _present,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, MAX_LOGPROBS),
    "max_tokens": _integer(1, INT32),
    "max_completion_tokens": _integer(1, INT32),
    "tools": schemas.tools,
    "tool_choice": schemas.tool_choice,
    "parallel_tool_calls": _boolean,
    "reasoning_effort": _text(16),
    "metadata": _metadata,
    "store": _boolean,
    "service_tier": _text(16),
    "include_reasoning": _boolean,
    "echo": _boolean,
    "add_generation_prompt": _boolean,
    "continue_final_message": _boolean,
    "chat_template_kwargs": schemas.template_kwargs,
    # OpenAI's, for its own services: taken (its SDKs send them), never sent on (NOT_FORWARDED).
    "safety_identifier": _text(128),
    "prompt_cache_key": _text(64),
    "prompt_cache_retention": _one_of("in_memory", "in-memory", "24h"),
    "verbosity": _one_of("low", "medium", "high"),
}
# Dropped before the engine sees them: vLLM 0.32 has no such fields (it logs each unknown field it ignores, on
# an engine other teams share), a safety identifier names an end user, for OpenAI's abuse detection only, and
# metadata is the caller's own (OpenAI stores it with the completion).
NOT_FORWARDED = (
    *("safety_identifier", "prompt_cache_key", "prompt_cache_retention", "verbosity", "metadata"),
    *("store", "service_tier"),  # OpenAI's own storage and tiers; vLLM's requests have neither
)

COMPLETION: dict[str, Check] = {
    **_SAMPLING,
    "prompt": _present,
    "suffix": _text(1_000_000),
    "echo": _boolean,
    "logprobs": _integer(0, MAX_LOGPROBS),
    "max_tokens": _integer(0, INT32),
    "best_of": _integer(1, INT32),
}

EMBEDDING: dict[str, Check] = {
    "model": _text(256),
    "input": _present,
    "encoding_format": _one_of("float", "base64"),
    "dimensions": _integer(1, 65536),
    "user": _text(256),
    "truncate_prompt_tokens": _integer(-1, INT32),
    "add_special_tokens": _boolean,
}

FIELDS = {"chat": CHAT, "completion": COMPLETION, "embedding": EMBEDDING}
REQUIRED = {"chat": "messages", "completion": "prompt", "embedding": "input"}
_STREAM_OPTIONS = {"include_usage", "continuous_usage_stats", "include_obfuscation"}
_DICTS = repeat(dict)  # isinstance's second argument, for every message: the test runs in C


def check(kind: str, payload: dict, body_size: int, *, max_n: int, max_inputs: int) -> Shape:
    """Check every field of ``payload`` for route ``kind``; its shape, or ``PayloadError``."""
    fields = FIELDS[kind]
    for name, value in payload.items():
        checker = fields.get(name)
        if checker is None:
            raise PayloadError(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
        checker(name, value)
    required = REQUIRED[kind]
    if payload.get(required) is None:
        raise PayloadError(
            f"Missing required parameter: `{required}`.", required, "missing_required_parameter"
        )
    if kind == "embedding":
        return Shape(
            prompts=_prompt_bounds("input", payload["input"], 0, max_inputs), choices=0, per_choice=0
        )

    n = payload.get("n")
    n = 1 if n is None else n
    best_of = payload.get("best_of") or 1
    for name, value in (("n", n), ("best_of", best_of)):
        if value > max_n:
            raise PayloadError(f"`{name}` may be at most {max_n} on this model.", name)
    stream = bool(payload.get("stream"))
    options = payload.get("stream_options")
    if options is not None:
        if not stream:
            raise PayloadError("`stream_options` can only be given with `stream: true`.", "stream_options")
        for name, value in options.items():
            if name not in _STREAM_OPTIONS:
                raise PayloadError(
                    f"Unrecognized request argument supplied: stream_options.{name}",
                    f"stream_options.{name}",
                    "unknown_parameter",
                )
            _boolean(f"stream_options.{name}", value)
    include_usage = bool(options and options.get("include_usage"))
    continuous = include_usage and bool(options and options.get("continuous_usage_stats"))
    # best_of is not a field of vLLM 0.32's requests (it is ignored); reserved for anyway, should an engine
    # honour it.
    choices = max(n, best_of)

    if kind == "chat":
        messages = payload["messages"]
        if not isinstance(messages, list) or not messages or not all(map(isinstance, messages, _DICTS)):
            raise PayloadError("`messages` must be a non-empty array of message objects.", "messages")
        limit = payload.get("max_completion_tokens")
        if limit is None:
            limit = payload.get("max_tokens")
        bound = body_size + CHAT_TEMPLATE_TOKENS
        if "tools" in payload or "chat_template_kwargs" in payload or not schemas.plain(messages):
            bound += schemas.template_growth(payload)  # what pretty-printing them adds (schemas.py)
        return Shape(
            prompts=(bound,),
            choices=choices,
            per_choice=limit,
            n=n,
            stream=stream,
            include_usage=include_usage,
            continuous_usage=continuous,
        )

    suffix = payload.get("suffix")
    extra = _text_bound(suffix) if suffix else 0
    limit = payload.get("max_tokens")
    per_choice = COMPLETION_DEFAULT_MAX_TOKENS if limit is None else max(limit, 1)  # echo with 0 makes one
    return Shape(
        prompts=_prompt_bounds("prompt", payload["prompt"], extra, max_inputs),
        choices=choices,
        per_choice=per_choice,
        n=n,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
    )


def check_logprob_entries(kind: str, payload: dict, shape: Shape, most: int) -> None:
    """Refuse a request whose prompt log-probabilities could make an answer of more than ``most`` entries.

    vLLM answers ``prompt_logprobs`` (chat: once; completions: in every choice) and a completion's ``echo``
    with ``logprobs`` (in every choice) with 1 + k log-probabilities for every prompt token: a long prompt
    makes an answer of gigabytes, read whole by the gateway. The prompts' bounds are not clipped to a
    context: the endpoint's fallbacks may have longer ones.
    """
    prompt = payload.get("prompt_logprobs")
    per_token = 0 if prompt is None else 1 + prompt
    echoed = kind == "completion" and payload.get("echo") and payload.get("logprobs") is not None
    if echoed:
        per_token += 1 + payload["logprobs"]
    if not per_token:
        return
    copies = 1 if kind == "chat" else shape.choices
    entries = sum(shape.prompts) * per_token * copies
    if entries > most:
        name = "prompt_logprobs" if prompt is not None else "echo"
        raise PayloadError(
            f"`{name}` could return up to {entries:,} log-probabilities for a prompt this long (1 + k per "
            f"prompt token, per choice), more than the {most:,} a request may ask for: ask for fewer, or "
            "send a shorter prompt.",
            name,
        )


def _text_bound(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _prompt_bounds(name: str, value: object, extra: int, max_inputs: int) -> tuple[int, ...]:
    """Each prompt's token bound: a string's bytes plus special tokens, a token-id list's length."""
    if isinstance(value, str):
        return (_text_bound(value) + SPECIAL_TOKENS + extra,)
    if not isinstance(value, list) or not value:
        raise PayloadError(
            f"`{name}` must be a string, an array of strings or token ids, or an array of "
            "arrays of token ids, and not empty.",
            name,
        )
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return (len(value) + extra,)  # one prompt of token ids: no special tokens are added to those
    if len(value) > max_inputs:
        raise PayloadError(f"`{name}` may have at most {max_inputs} items.", name)
    if isinstance(first, str):
        if not all(isinstance(item, str) for item in value):
            raise PayloadError(f"`{name}` must not mix strings with other items.", name)
        return tuple(_text_bound(item) + SPECIAL_TOKENS + extra for item in value)
    if isinstance(first, list):
        if not all(isinstance(item, list) and item for item in value):
            raise PayloadError(
                f"`{name}` must not mix token-id arrays with other items, or hold an empty one.", name
            )
        return tuple(len(item) + extra for item in value)
    raise PayloadError(
        f"`{name}` must be a string, an array of strings or token ids, or an array of arrays of token ids.",
        name,
    )


# What an upload's seconds weigh against the key's token limits (tokens per minute, the monthly token budget):
# the positions a speech encoder reads for them, Whisper's 1,500 per 30 s. The engine reports a transcription's
# duration and no tokens, so without this a key's token limits would not bound its audio at all. Billing
# prices the seconds themselves (``audio_cost``), not these tokens.
AUDIO_TOKENS_PER_SECOND = 50


def audio_tokens(audio_ms: int) -> int:
    """The tokens an upload of ``audio_ms`` counts against token limits (up: a started 20 ms is a position)."""
    return -(-audio_ms * AUDIO_TOKENS_PER_SECOND // 1000)
