"""A verifier: a plain endpoint asked whether an answer is right, yes or no, as a cascade's confidence or a
vote's best-of-n. What it is asked, the most asking may cost, and the asking itself (each question a hop of
its own, metered ``via`` the composite like every hop).

Contract, as composite.py's: PostgreSQL is never touched. The verifier sees the request's last user message
(or prompt) and the candidate answer, each cut to a bound (and together to its context), never the rest of
the conversation; it answers in a couple of tokens at temperature 0, and anything but a yes vouches for
nothing (voting.verdict).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from serving.gateway import payloads, voting
from serving.gateway.errors import GatewayError
from serving.gateway.hop_prompts import cut
from serving.gateway.routing import Composite, EndpointInfo


class Run(Protocol):
    """What is asked of composite.Run (not imported: composite imports this module)."""

    async def ask(self, hop: EndpointInfo, kind: str, body: dict, shape: payloads.Shape) -> dict: ...


QUESTION_MAX = 16_000  # bytes of the request shown to the verifier
ANSWER_MAX = 8_000  # bytes of the candidate answer shown to it
VERDICT_TOKENS = 2  # "yes" / "no", with room for a leading space
INSTRUCTIONS = "You check answers. Reply with one word: yes if the answer is right for the request, else no."
FRAME_BYTES = 96  # the "Request:" / "Answer:" / question lines around the two texts


def _limits(composite: Composite, context: int, question: str) -> tuple[int, int]:
    """Bytes of the request and of the answer shown to the verifier: at most QUESTION_MAX and ANSWER_MAX,
    and together what ``context`` (the smallest of the verifier's and its fallbacks') leaves after the
    instructions and the verdict (bytes bound tokens), the answer keeping at least a third of that room. A
    long request is judged by its start, not refused."""
    instructions = composite.verifier_prompt or INSTRUCTIONS
    room = max(
        0,
        context - len(instructions.encode()) - FRAME_BYTES - payloads.CHAT_TEMPLATE_TOKENS - VERDICT_TOKENS,
    )
    asked = min(len(question.encode()), QUESTION_MAX, room - min(ANSWER_MAX, room // 3))
    return asked, min(ANSWER_MAX, room - asked)


def request(
    composite: Composite, verifier: EndpointInfo, context: int, question: str, answer: str
) -> tuple[str, dict]:
    """(kind, body) of the question put to the verifier about one answer."""
    instructions = composite.verifier_prompt or INSTRUCTIONS
    asked, answered = _limits(composite, context, question)
    shown = (
        f"Request:\n{cut(question, asked)}\n\nAnswer:\n{cut(answer, answered)}\n\n"
        "Is the answer right? Reply yes or no."
    )
    common = {"max_tokens": VERDICT_TOKENS, "temperature": 0}
    if verifier.no_chat:  # a base model without a chat template: a plain text prompt to continue
        return "completion", {"prompt": f"{instructions}\n\n{shown}\nVerdict:", **common}
    messages = [{"role": "system", "content": instructions}, {"role": "user", "content": shown}]
    return "chat", {"messages": messages, **common}


def shape(composite: Composite, context: int, question: str, questions: int = 1) -> payloads.Shape:
    """What ``questions`` questions to the verifier ask of its engine, at most (bytes bound tokens)."""
    instructions = composite.verifier_prompt or INSTRUCTIONS
    asked, answered = _limits(composite, context, question)
    bound = asked + answered + len(instructions.encode()) + FRAME_BYTES + payloads.CHAT_TEMPLATE_TOKENS
    return payloads.Shape(prompts=(bound,) * questions, choices=1, per_choice=VERDICT_TOKENS)


def shown(said: bool | None) -> bytes:
    """A verdict as the ``x-portfolio-verdict`` header says it."""
    return b"yes" if said else b"no" if said is False else b"unclear"


async def verdicts(
    run: Run, verifier: EndpointInfo, context: int, composite: Composite, question: str, answers: list[str]
) -> list[bool | None]:
    """The verifier's verdict on each answer, asked at once (a vote's distinct answers: at most n). One
    failing question fails the request, and the questions still running are cancelled."""
    one_shape = shape(composite, context, question)

    async def ask(answer: str) -> bool | None:
        kind, body = request(composite, verifier, context, question, answer)
        reply = await run.ask(verifier, kind, body, one_shape)
        return voting.verdict(voting.answer_text(reply["choices"][0]))

    if len(answers) == 1:
        return [await ask(answers[0])]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(ask(answer)) for answer in answers]
    except* GatewayError as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
