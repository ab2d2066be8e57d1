"""The JSON values of a chat call that the engine hands to its chat template or its structured-output grammar
(``tools``, ``tool_choice``, ``chat_template_kwargs``, ``response_format``, ``structured_outputs``, and what a
message holds beyond its text: ``tool_calls``, a developer's ``tools``...): their shape, how deeply they nest,
and how much a template that pretty-prints them adds to the prompt.

Contract: each of these values nests at most ``MAX_DEPTH`` levels, and so does each tool call's ``arguments``
as vLLM parses it; each tool is a function tool with a name of at most 64 characters (OpenAI's); and the
prompt bound (payloads.py) counts what rendering the template's inputs with ``tojson(indent=4)`` adds to their
bytes in the body, which may be at most ``MAX_RENDER_GROWTH``.
Without that, a body of 4 MiB nested or listed deep enough became a prompt of hundreds of MB that the engine
rendered and tokenised (minutes of CPU) before refusing it unbilled as longer than its context. Plain type
tests; a body without these fields pays a dict lookup each (and a pass over its messages' keys, in C), and
one with them a walk of their containers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import orjson

from serving.gateway.errors import PayloadError

# The deepest a value may nest, its own object or array counting as the first level. OpenAI's structured
# outputs allow 10 nested object levels; written out, each takes up to 4 JSON levels (`properties`, the
# property's schema, an `anyOf` array, its member), under the value's own wrappers (a tool, its `function`, its
# `parameters`), with `enum` arrays at the leaves: under 64. vLLM and Jinja recurse once per level.
MAX_DEPTH = 64
TOOLS = 1024
FUNCTION_NAME_CHARS = 64  # OpenAI's limit on a function's name
# Chat templates render tools with `tojson`, many pretty-printed: Llama 3.x's `tools | tojson(indent=4)`, the
# widest indent in common templates. transformers' `tojson` is json.dumps with ensure_ascii=False: a string,
# key, integer, true, false or null takes no more bytes than in the body (escapes are only ever needed ones),
# and neither does a comma, colon or bracket. What it adds, per level d (the value's own array or object is
# level 1): a newline and 4*d spaces before each element, a space after each key's colon, a newline and
# 4*(d-1) spaces before a non-empty container's closing bracket; and a float may take up to FLOAT_CHARS
# however it was written (`1e15` is 1000000000000000.0). A token is at least a byte, so these bytes bound the
# tokens the rendering adds. vLLM also fills in a function's missing `description` and `parameters` as null
# (two members at level 3 of the list: under TOOL_DEFAULTS bytes). A template that renders a value twice
# (in JSON and again as prose) is not bounded by this; the context still is.
INDENT = 4
FLOAT_CHARS = 24  # the longest repr of a float: -2.2250738585072014e-308
TOOL_DEFAULTS = 80
# The most that pretty-printing may add to a prompt: as much again as the largest body the gateway reads by
# default (PORTFOLIO_GATEWAY_MAX_BODY_BYTES). An array of a million small items 60 levels down adds 250 MB.
MAX_RENDER_GROWTH = 4 * 1024 * 1024
TOOL_CHOICES = ("none", "auto", "required")
WIDE = 32  # past this many items, a container's scalars are told apart in C


def _refused(message: str, param: str, code: str = "invalid_value") -> Exception:
    return PayloadError(message, param, code)


def rendered_growth(name: str, value: dict | list, room: int = 2**62, depth: int = 1) -> int:
    """The most bytes that pretty-printing ``value`` (a container at level ``depth``) adds to its bytes in the
    body; refused past ``MAX_DEPTH`` levels, or as soon as that passes ``room``."""
    if depth > MAX_DEPTH:
        raise _refused(f"`{name}` may nest at most {MAX_DEPTH} levels of arrays and objects.", name)
    if not value:
        return 0
    items: Iterable[object]
    if type(value) is dict:
        items, colons = value.values(), len(value)  # a space after each key's colon
    else:
        items, colons = value, 0
    pad = 1 + INDENT * depth
    added = len(value) * pad + colons + pad - INDENT
    narrow = len(value) <= WIDE
    if not narrow:
        if added > room:  # before its items are looked at: a hostile array is refused at once
            raise _too_large(name)
        kinds = list(map(type, items))  # in C: a wide array of scalars costs no Python loop
        added += FLOAT_CHARS * kinds.count(float)
        if dict not in kinds and list not in kinds:
            return added
    for item in items:
        if type(item) is dict or type(item) is list:
            added += rendered_growth(name, item, room - added, depth + 1)
        elif narrow and type(item) is float:
            added += FLOAT_CHARS
    if added > room:
        raise _too_large(name)
    return added


def _too_large(name: str) -> Exception:
    return _refused(
        f"`{name}` would grow by more than {MAX_RENDER_GROWTH:,} bytes as a chat template renders it "
        "(pretty-printed, every level indented): send fewer or less deeply nested items.",
        name,
    )


def template_growth(payload: dict) -> int:
    """What a pretty-printing chat template can add to a chat call's prompt, beyond the body's bytes: for its
    ``tools``, its ``chat_template_kwargs`` (variables of the template, which may be rendered as they are,
    and may even stand in for ``tools``) and its messages' values other than text."""
    growth = 0
    for name in ("tools", "chat_template_kwargs"):
        value = payload.get(name)
        if not value:
            continue
        if name == "tools":
            growth += len(value) * TOOL_DEFAULTS
        growth += rendered_growth(name, value, MAX_RENDER_GROWTH - growth)
    messages = payload["messages"]
    if not plain(messages):
        growth += _message_growth(messages, MAX_RENDER_GROWTH - growth)
    return growth


# vLLM 0.32 (renderers/chat_utils.py: _parse_chat_message_content) hands the template a message's role,
# content (parts checked by images.py), name, tool_call_id and task as text, and as they came: an assistant's
# `tool_calls` (each `function.arguments` parsed from its JSON text into the object templates render with
# `tojson`), its `reasoning` (whatever its type) and a developer's `tools`. Other keys are dropped, but are
# walked too: what a newer engine or template reads is bounded all the same.
_TEXT_KEYS = frozenset({"role", "content", "name"})
_keys = frozenset().union


def plain(messages: list) -> bool:
    """Whether ``messages`` (a list of objects) hold only text keys: one pass over their keys, in C."""
    return _keys(*messages) <= _TEXT_KEYS


def _message_growth(messages: list, room: int) -> int:
    """What rendering the values of ``messages`` other than their content adds to their bytes in the body,
    each value's own container the first level; refused past ``MAX_DEPTH`` levels or past ``room``."""
    growth = 0
    for index, message in enumerate(messages):
        for key, value in message.items():
            if key == "content" or (type(value) is not dict and type(value) is not list):
                continue
            where = f"messages[{index}].{key}"
            growth += rendered_growth(where, value, room - growth)
            if key == "tool_calls" and type(value) is list:
                growth += _arguments_growth(where, value, room - growth)
    return growth


def _arguments_growth(where: str, calls: list, room: int) -> int:
    """Tool calls' ``arguments`` are JSON text, as OpenAI's API and vLLM 0.32 take them; vLLM parses each into
    the object the template renders (one that is not JSON, or not an object, as ``{}``)."""
    growth = 0
    for index, call in enumerate(calls):
        function = call.get("function") if type(call) is dict else None
        if type(function) is not dict or function.get("arguments") is None:
            continue  # vLLM refuses a call without a function or its arguments (pydantic)
        arguments = function["arguments"]
        param = f"{where}[{index}].function.arguments"
        if type(arguments) is not str:
            raise _refused(f"`{param}` must be a string (the arguments as JSON text).", param, "invalid_type")
        parsed = _parsed(param, arguments)
        if type(parsed) is dict:  # at its level in `tool_calls` (call, function, arguments): rendered whole
            growth += rendered_growth(param, parsed, room - growth, 4)
    return growth


def _parsed(param: str, text: str) -> object:
    """``text`` as vLLM's ``json.loads`` reads it (None where it cannot); orjson first, as it is faster."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # NaN, Infinity and lone surrogates are JSON to Python's parser; past 1,024 levels is to neither
    try:
        return json.loads(text)
    except RecursionError:
        raise _refused(
            f"`{param}` may nest at most {MAX_DEPTH} levels of arrays and objects.", param
        ) from None
    except ValueError:
        return None


# --- Field checks (payloads.py's allow-lists) --------------------------------------------------------------
def nested(name: str, value: object) -> None:
    """An object of at most ``MAX_DEPTH`` levels (``response_format``, ``structured_outputs``)."""
    if value is None:
        return
    if type(value) is not dict:
        raise _refused(f"`{name}` must be an object.", name, "invalid_type")
    rendered_growth(name, value)


def template_kwargs(name: str, value: object) -> None:
    """An object; its depth is checked where its growth is counted (``template_growth``)."""
    if value is not None and type(value) is not dict:
        raise _refused(f"`{name}` must be an object.", name, "invalid_type")


def _function_name(param: str, value: object) -> None:
    if type(value) is not str or not 1 <= len(value) <= FUNCTION_NAME_CHARS:
        raise _refused(f"`{param}` must be a string of 1-{FUNCTION_NAME_CHARS} characters.", param)


def tools(name: str, value: object) -> None:
    """At most ``TOOLS`` function tools, as OpenAI (and vLLM 0.32) take them:
    ``{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}``."""
    if value is None:
        return
    if type(value) is not list:
        raise _refused(f"`{name}` must be an array.", name, "invalid_type")
    if len(value) > TOOLS:
        raise _refused(f"`{name}` may have at most {TOOLS} items.", name)
    for index, tool in enumerate(value):
        where = f"{name}[{index}]"
        function = tool.get("function") if type(tool) is dict else None
        if type(function) is not dict or tool.get("type") != "function":
            raise _refused(
                f'`{where}` must be a function tool: {{"type": "function", "function": {{"name": ...}}}}.',
                where,
                "invalid_type",
            )
        _function_name(f"{where}.function.name", function.get("name"))
        for key, kind, expected in (
            ("description", str, "a string"),
            ("parameters", dict, "an object (a JSON schema)"),
            ("strict", bool, "true or false"),
        ):
            field = function.get(key)
            if field is not None and type(field) is not kind:
                param = f"{where}.function.{key}"
                raise _refused(f"`{param}` must be {expected}.", param, "invalid_type")


def tool_choice(name: str, value: object) -> None:
    """``none``, ``auto``, ``required`` or a named function: the choices vLLM 0.32 takes."""
    if value is None or value in TOOL_CHOICES:
        return
    function = value.get("function") if type(value) is dict else None
    if type(value) is not dict or type(function) is not dict or value.get("type") != "function":
        raise _refused(
            f'`{name}` must be one of {", ".join(TOOL_CHOICES)}, or {{"type": "function", "function": '
            '{"name": ...}}.',
            name,
        )
    _function_name(f"{name}.function.name", function.get("name"))
    rendered_growth(name, value)
