"""What a composite endpoint's hops are asked, besides the client's own request: the text a router's
classifier labels (the last user message), and a chat request escalated by a cascade to a base model (no
chat template) as a plain prompt: the cascade's ``large_template`` with the last user message in place of
``{input}`` (few-shot examples, say), asked through /v1/completions, and the completion given back to the
client as a chat completion.

Contract, as composite.py's: no I/O here; the rendered prompt's size is known before the call (the template
bounded by the service, the message whole: the client's request bounds it), so the reservation counts it;
the classifier is shown at most LABEL_PROMPT_MAX bytes of the message, and what its context holds.
"""

from __future__ import annotations

from serving.gateway import payloads, voting
from serving.gateway.routing import Composite, EndpointInfo

PLACEHOLDER = "{input}"
LABEL_PROMPT_MAX = 16_000  # bytes of the last user message a router's classifier is asked with


def last_user_text(kind: str, payload: dict) -> str:
    """The last user message (its text parts), or a text prompt (a list of one text prompt included: a
    composite takes one prompt per request), whole: each hop that is shown it cuts it to its own bound (a
    classifier, a verifier), and a templated large endpoint is asked with all of it."""
    if kind != "chat":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else ""
    for message in reversed(payload.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
            return content if isinstance(content, str) else ""
    return ""


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (a character cut in two is dropped)."""
    return text.encode()[: max(0, limit)].decode(errors="ignore")


def classifier_text(composite: Composite, context: int, text: str) -> str:
    """The start of ``text``, at most LABEL_PROMPT_MAX bytes and as much as ``context`` (the smallest of the
    classifier's and its fallbacks': any may answer) leaves room for after the system prompt and the label
    (bytes bound tokens): a long message is labelled by its start, not refused."""
    room = context - len(composite.system.encode()) - payloads.CHAT_TEMPLATE_TOKENS - composite.label_tokens
    return cut(text, min(room, LABEL_PROMPT_MAX))


def classifier_request(
    composite: Composite, classifier: EndpointInfo, context: int, text: str
) -> tuple[str, dict]:
    """(kind, body) of the question put to a router's classifier: short, at temperature 0."""
    text = classifier_text(composite, context, text)
    common = {"max_tokens": composite.label_tokens, "temperature": 0}
    if classifier.no_chat:  # a base model without a chat template: a plain text prompt
        prompt = f"{composite.system}\n\n{text}\n" if composite.system else f"{text}\n"
        return "completion", {"prompt": prompt, **common}
    messages = [{"role": "system", "content": composite.system}] if composite.system else []
    return "chat", {"messages": [*messages, {"role": "user", "content": text}], **common}


def classifier_shape(composite: Composite, context: int, text: str) -> payloads.Shape:
    """What the classifier's question asks of the engine at most (bytes bound tokens): reserved and billed
    as such."""
    asked = classifier_text(composite, context, text)
    return payloads.Shape(
        prompts=(len(asked.encode()) + len(composite.system.encode()) + payloads.CHAT_TEMPLATE_TOKENS,),
        choices=1,
        per_choice=composite.label_tokens,
    )


def applies(composite: Composite, kind: str, large_no_chat: str) -> bool:
    """A chat request whose large endpoint takes completions only, and a template to ask it with."""
    return kind == "chat" and bool(large_no_chat) and bool(composite.large_template)


def render(template: str, text: str) -> str:
    # Not str.format: a message's own braces stay as they are.
    return template.replace(PLACEHOLDER, text)


def smallest_context(chain: list[EndpointInfo], deployments: dict) -> int:
    """The context of the smallest deployment the endpoints of ``chain`` (a hop and its fallbacks) route to
    (``Snapshot.deployments``): any of them may answer, and an engine refuses a ``max_tokens`` above what
    its own leaves."""
    known = [
        deployments[r.deployment].max_model_len
        for hop in chain
        for r in hop.routes
        if r.deployment in deployments
    ]
    return min(known, default=min(hop.max_model_len for hop in chain))


def completion_body(composite: Composite, payload: dict, text: str, context: int) -> dict:
    """The completion request: the rendered prompt, with the client's limits and sampling. Without a limit
    from the client, a chat call's: the rest of the ``context`` after the prompt, not the completions route's
    default of 16 tokens. Sent as a number: vLLM refuses a prompt and ``max_tokens`` over the context (a
    400, the whole context asked), and takes a null for the end of the context with failures of its own
    (intake.py). The prompt's bytes, and the special tokens an engine adds, bound its tokens: what is left
    always fits (at least one token, should the prompt's bound fill the context)."""
    body: dict = {"prompt": render(composite.large_template, text)}
    limit = payload.get("max_completion_tokens")
    limit = payload.get("max_tokens") if limit is None else limit
    if limit is None:
        limit = max(1, context - prompt_bound(composite, text) - payloads.SPECIAL_TOKENS)
    body["max_tokens"] = limit
    for name in ("temperature", "top_p", "seed"):
        if name in payload:
            body[name] = payload[name]
    stop = list(composite.large_stop) or payload.get("stop")
    if stop:
        body["stop"] = stop
    return body


def shape(composite: Composite, text: str, asked: payloads.Shape) -> payloads.Shape:
    """What the completion asks of the engine at most (bytes bound tokens), one choice, unstreamed: the
    message counts once per placeholder render() fills (the service allows one; a row edited by hand may
    hold more)."""
    return asked._replace(prompts=(prompt_bound(composite, text),), choices=1, n=1, stream=False)


def prompt_bound(composite: Composite, text: str) -> int:
    """The rendered prompt's bytes at most (a bound on its tokens, less the engine's special tokens)."""
    template = composite.large_template
    return len(template.encode()) + template.count(PLACEHOLDER) * len(text.encode())


def as_chat(answer: dict, model: str) -> dict:
    """A completion answer in a chat completion's shape (the client called chat)."""
    choices = [
        {
            "index": choice.get("index", 0) if isinstance(choice, dict) else 0,
            "message": {"role": "assistant", "content": voting.answer_text(choice)},
            "logprobs": None,
            "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None,
        }
        for choice in answer.get("choices") or []
    ]
    return {
        "id": answer.get("id"),
        "object": "chat.completion",
        "created": answer.get("created"),
        "model": model,
        "choices": choices,
        "usage": answer.get("usage"),
    }
