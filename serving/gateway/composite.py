"""Composite endpoints on the hot path: a router, a cascade and test-time compute, behind the one name a
client calls (their decisions are voting.py's pure functions; their configs, serving/services/composite.py).

Contract, as for plain endpoints (app.py): PostgreSQL is never touched per request, the config rides in the
routing table. Every hop is a plain endpoint the key must be allowed to call itself (team, shares, scopes):
one it may not is refused before anything runs, naming it. Admission reserves the worst case of all the
hops a request may make (the sum of its steps, each step its costliest choice); each hop is then metered
as a usage event of its own (``via`` the composite), priced by the endpoint that answered, and the
reservation is settled once with their sum. The final hop streams as a plain call does; an answer the
gateway picked itself (a cascade's small answer kept, a vote's winner) is sent whole, or as a valid
server-sent-event stream when the client asked for one. Response headers say which endpoint answered and
why: ``x-portfolio-answered-by``, ``x-portfolio-route-label``, ``x-portfolio-escalated`` (with
``x-portfolio-confidence``, or ``x-portfolio-verdict`` when a verifier judged), ``x-portfolio-votes``. A
verifier's questions (verifier.py) are hops like the others; a vote's run at once.
"""

from __future__ import annotations

import time

import orjson
from django.conf import settings

from serving.gateway import access, admission, hop_ids, hop_prompts, keystate, payloads, verifier, voting
from serving.gateway.answers import Capture, never_disconnects, send_answer, with_headers
from serving.gateway.errors import GatewayError
from serving.gateway.events import USAGE_STREAM, Outcome, usage_event
from serving.gateway.keycache import KeyRecord
from serving.gateway.limits import SpendCaps
from serving.gateway.routing import Composite, EndpointInfo, price_micros


def hops(snapshot, key: KeyRecord, first: EndpointInfo, kind: str) -> dict[str, EndpointInfo]:
    """The plain endpoints ``first`` may call, each checked as the key's own call would be."""
    composite = first.composite
    assert composite is not None, "a composite endpoint"
    found = {}
    for name in composite.hops():
        hop = snapshot.endpoints.get(name)
        # Every hop is asked for text: one serving embeddings, speech or scores (restarted onto such a model
        # since, or a row edited by hand) would answer nothing a composite can use.
        if hop is None or hop.composite is not None or hop.embedding or hop.serves != "text":
            raise GatewayError(
                503,
                f"`{first.name}` calls `{name}`, which is not a plain text endpoint right now; ask its owners.",
                "composite_misconfigured",
            )
        if not access.may_call(key, hop):
            raise GatewayError(
                403,
                f"`{first.name}` calls `{name}`, which this key may not call: add `{name}` to the key's scopes "
                f"(or share it with the key's team) to call `{first.name}`.",
                "model_not_allowed",
                param="model",
            )
        # A classifier, a verifier and a templated large endpoint are asked with plain prompts.
        templated = name == composite.large and composite.large_template
        if (
            kind == "chat"
            and hop.no_chat
            and name not in (composite.classifier, composite.verifier)
            and not templated
        ):
            raise GatewayError(
                400,
                f"`{first.name}` calls `{name}`, which has no chat template ({hop.no_chat}): call "
                "/v1/completions with it.",
                "unsupported_endpoint",
                param="model",
            )
        if name == composite.sampler and composite.n > min(hop.max_n, settings.GATEWAY_MAX_N):
            # The service keeps a sampler's cap at its votes' n; a cap lowered since (or a row edited by
            # hand) must not let a vote ask for more completions than the sampler's own callers may.
            raise GatewayError(
                503,
                f"`{first.name}` asks `{name}` for {composite.n} completions, more than it allows per request; "
                "ask its owners.",
                "composite_misconfigured",
            )
        found[name] = hop
    return found


def reservation(
    composite: Composite, found: dict[str, EndpointInfo], shape: payloads.Shape, text: str, kind: str = "chat"
) -> tuple[int, int, list[list[tuple[EndpointInfo, int]]]]:
    """Tokens and money (micros) for the worst case of every step, and each step's hops with their money
    (for the spend caps, which count another team's hops only: the costliest of a step may be free)."""
    steps: list[list[tuple[EndpointInfo, payloads.Shape]]] = []
    if composite.kind == "router":
        classifier = found[composite.classifier]
        steps.append([(classifier, hop_prompts.classifier_shape(composite, classifier, text))])
        steps.append([(found[name], shape) for name in {*composite.table.values(), composite.default}])
    elif composite.kind == "cascade":
        steps.append([(found[composite.small], shape)])
        if composite.verifier:
            checker = found[composite.verifier]
            steps.append([(checker, verifier.shape(composite, checker, text))])
        large = found[composite.large]
        asked = (
            hop_prompts.shape(composite, text, shape)
            if hop_prompts.applies(composite, kind, large.no_chat)
            else shape
        )
        steps.append([(large, asked)])
    else:
        steps.append([(found[composite.sampler], shape._replace(choices=composite.n, n=composite.n))])
        if composite.verifier:  # at worst every sample a distinct answer, each asked about
            checker = found[composite.verifier]
            steps.append([(checker, verifier.shape(composite, checker, text, composite.n))])
    tokens = money = 0
    priced: list[list[tuple[EndpointInfo, int]]] = []
    for step in steps:
        worst = [
            (
                hop,
                *payloads.worst_case(
                    s, hop.max_model_len, hop.input_micros_per_token, hop.output_micros_per_token
                ),
            )
            for hop, s in step
        ]
        tokens += max(t for _, t, _ in worst)
        money += max(m for _, _, m in worst)
        priced.append([(hop, hop_money) for hop, _, hop_money in worst])
    return tokens, money, priced


def spend_caps(snapshot, key: KeyRecord, steps: list[list[tuple[EndpointInfo, int]]]) -> SpendCaps | None:
    """As admission.spend_caps, summed over the steps: in each, the costliest hop the team's (or the
    department's) statement would charge; its own team's hops cost the team nothing."""
    team = snapshot.caps.get(("team", key.team_id))
    department = snapshot.caps.get(("department", key.department_id))
    if team is None and department is None:
        return None
    team_reserve = department_reserve = 0
    for step in steps:
        # Another team's hop reserves at least admission.AT_COST_RESERVE: unpriced, it is charged at cost.
        others = [(hop, max(m, admission.AT_COST_RESERVE)) for hop, m in step if hop.team_id != key.team_id]
        team_reserve += max((m for _, m in others), default=0)
        department_reserve += max(
            (m for hop, m in others if hop.department_id != key.department_id), default=0
        )
    return SpendCaps(
        key.team_id,
        key.department_id,
        team,
        department,
        team_reserve,
        department_reserve,
        snapshot.caps_month,
    )


class Run:
    """One request to a composite endpoint: its hops in order, each with its outcome."""

    def __init__(self, gateway, request_id: str, caller, first: EndpointInfo, event_id: str, started: float):
        self.gateway, self.request_id, self.caller, self.first = gateway, request_id, caller, first
        self.event_id, self.started = event_id, started
        self.outcomes: list[Outcome] = []
        # When each hop began and ended (perf_counter; 0: it is the final hop, or was cut short): hops may
        # overlap (a vote's verifier questions), so each one's latency is its own span.
        self.spans: list[list[float]] = []

    def _outcome(self, hop: EndpointInfo, kind: str, shape: payloads.Shape) -> Outcome:
        outcome = Outcome(
            endpoint=hop.name,
            kind=kind,
            shape=shape,
            event_id=hop_ids.of_hop(self.event_id, len(self.outcomes) + 1),
            first=hop,
        )
        outcome.via = self.first.name
        self.outcomes.append(outcome)
        # The first hop's span starts with the request: the gateway's own work is billed to it, as a plain
        # call's is.
        self.spans.append([self.started if len(self.spans) == 0 else time.perf_counter(), 0.0])
        return outcome

    async def ask(self, hop: EndpointInfo, kind: str, body: dict, shape: payloads.Shape) -> dict:
        """An intermediate hop's answer, read whole (its errors become the client's, naming the hop)."""
        outcome = self._outcome(hop, kind, shape._replace(stream=False))
        span = self.spans[-1]
        capture = Capture()
        await self.gateway._dispatch(
            never_disconnects,
            capture,
            self.request_id,
            [hop],
            hop.name,
            body,
            outcome,
            self.started,
            self.caller,
        )
        span[1] = time.perf_counter()
        if capture.status != 200:
            try:
                message = orjson.loads(capture.body)["error"]["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = capture.body[:200].decode(errors="replace")
            raise GatewayError(
                502 if capture.status >= 500 else capture.status,
                f"`{hop.name}` (called by `{self.first.name}`) answered {capture.status}: {message}",
                "upstream_error",
            )
        try:
            parsed = orjson.loads(capture.body)
            choices = parsed["choices"]
            if not isinstance(choices, list) or not choices:
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise GatewayError(
                502,
                f"`{hop.name}` (called by `{self.first.name}`) sent an unreadable answer.",
                "upstream_error",
            ) from None
        return parsed

    async def final(
        self, receive, send, hop: EndpointInfo, kind: str, payload: dict, shape: payloads.Shape, extra: list
    ) -> None:
        """The last hop: answered to the client as a plain call is (streaming included)."""
        outcome = self._outcome(hop, kind, shape)
        await self.gateway._dispatch(
            receive,
            with_headers(send, [(b"x-portfolio-answered-by", hop.name.encode()), *extra]),
            self.request_id,
            [hop],
            self.first.name,
            payload,
            outcome,
            self.spans[-1][0],  # its time to first token is its own, as its latency is
            self.caller,
        )


def _strip_logprobs(choice: dict, asked: bool) -> dict:
    return choice if asked else {k: v for k, v in choice.items() if k != "logprobs"}


def _asked_logprobs(kind: str, payload: dict) -> bool:
    value = payload.get("logprobs")
    return bool(value) if kind == "chat" else value is not None


def with_logprobs(kind: str, payload: dict) -> dict:
    """``payload`` asking the engine for each token's log-probability (as the client asked, if it did)."""
    if _asked_logprobs(kind, payload):
        return payload
    return dict(payload, logprobs=True) if kind == "chat" else dict(payload, logprobs=1)


async def serve(
    gateway,
    receive,
    send,
    request_id: str,
    kind: str,
    caller: tuple[KeyRecord, dict],
    payload: dict,
    shape: payloads.Shape,
    first: EndpointInfo,
    event_id: str,
    started: float,
) -> None:
    """Answer one request to a composite endpoint (admitted, run hop by hop, settled)."""
    key, headers = caller
    composite = first.composite
    assert composite is not None and gateway.limiter is not None, "a composite endpoint, a started gateway"
    snapshot = gateway.snapshot
    if len(shape.prompts) > 1:
        # A composite answers one question: its classifier, verifier and vote read one prompt, and its
        # reservation counts one prompt's questions (a list would ask the verifier once per answer of each).
        raise GatewayError(
            400,
            f"`{first.name}` answers one prompt per request: send `prompt` as one string (or one array of "
            "token ids).",
            "invalid_value",
            param="prompt",
        )
    for name in ("echo", "prompt_logprobs"):
        if payload.get(name) not in (None, False):
            # Log-probabilities of the prompt: a vote would get them n times over (unbounded by the check
            # of the client's request), and a cascade's or best-of-n's scores would count the prompt's.
            raise GatewayError(
                400,
                f"`{first.name}` is a composite endpoint, which answers with one answer it chose: `{name}` is "
                "not accepted there; call a plain endpoint for the prompt's log-probabilities.",
                "invalid_value",
                param=name,
            )
    if composite.kind == "vote" and (payload.get("tools") or payload.get("functions")):
        # Samples that call tools have no text to agree on: every tool call counted as one answer.
        raise GatewayError(
            400,
            f"`{first.name}` is a vote endpoint, which chooses among its samples' text answers: `tools` is not "
            "accepted there; call a plain endpoint (or a router or cascade) to use tools.",
            "invalid_value",
            param="tools",
        )
    found = hops(snapshot, key, first, kind)
    asks_text = composite.kind == "router" or composite.verifier or composite.large_template
    text = hop_prompts.last_user_text(kind, payload) if asks_text else ""
    tokens, money, priced = reservation(composite, found, shape, text, kind)
    whole = Outcome(endpoint=first.name, kind=kind, shape=shape, event_id=event_id, first=first)
    verdict = await gateway.limiter.admit(
        key,
        tokens=tokens,
        money_micros=money,
        revoked_set=keystate.REVOKED_SET,
        ledger=gateway.ledger,
        lost_event=usage_event(key, whole, 0.0, 0, lost=True),
        caps=spend_caps(snapshot, key, priced),
    )
    if not verdict.ok:
        if verdict.reason == "revoked":
            gateway.keys.evict(key.key_id)
        raise admission.refusal(key, verdict, tokens, money, playground=False)
    run = Run(gateway, request_id, (key.key_id, headers), first, event_id, started)
    try:
        if composite.kind == "router":
            await _route(run, receive, send, composite, found, kind, payload, shape, text)
        elif composite.kind == "cascade":
            await _cascade(run, receive, send, composite, found, kind, payload, shape, text)
        else:
            await _vote(run, send, composite, found, kind, payload, shape, text)
    except GatewayError as exc:
        _failed(run, exc.status, exc.code)
        exc.metered = bool(run.outcomes)
        raise
    except Exception:
        _failed(run, 500, "internal")
        raise
    finally:
        await settle(gateway, key, verdict.reservation, run)


def _failed(run: Run, status: int, code: str) -> None:
    """Mark the hops that did not finish (the last, or a vote's verifier questions cut short) as failed."""
    for outcome in run.outcomes:
        if not outcome.status:
            outcome.status, outcome.error = status, code


async def _route(run: Run, receive, send, composite: Composite, found, kind, payload, shape, text) -> None:
    if text:
        classifier = found[composite.classifier]
        asked_kind, asked = hop_prompts.classifier_request(composite, classifier, text)
        # Billed as reserved: its own small question, not the client's request (whose worst case, should
        # the classifier fail, would be billed at the classifier's price).
        asked_shape = hop_prompts.classifier_shape(composite, classifier, text)
        answer = await run.ask(classifier, asked_kind, asked, asked_shape)
        label, target = voting.route(
            voting.answer_text(answer["choices"][0]), composite.table, composite.default
        )
    else:
        label, target = "", composite.default  # nothing to classify: the default answers
    extra = [(b"x-portfolio-route-label", label.encode() or b"-")]
    await run.final(receive, send, found[target], kind, payload, shape, extra)


async def _cascade(
    run: Run, receive, send, composite: Composite, found, kind, payload, shape, text: str
) -> None:
    small = found[composite.small]
    judged = composite.confidence == "verifier"
    asked = payload if judged else with_logprobs(kind, payload)
    body = {k: v for k, v in asked.items() if k not in ("stream", "stream_options")}
    answer = await run.ask(small, kind, body, shape)
    if judged:
        said = await verifier.verdicts(
            run, found[composite.verifier], composite, text, [voting.answer_text(answer["choices"][0])]
        )
        escalate, told = said[0] is not True, (b"x-portfolio-verdict", verifier.shown(said[0]))
    else:
        confidence = voting.mean_logprob(answer["choices"][0])
        shown = b"none" if confidence is None else f"{confidence:.4f}".encode()
        escalate, told = voting.escalate(confidence, composite.threshold), (b"x-portfolio-confidence", shown)
    if escalate:
        extra = [(b"x-portfolio-escalated", b"true"), told]
        large = found[composite.large]
        if hop_prompts.applies(composite, kind, large.no_chat):
            context = hop_prompts.smallest_context(large, run.gateway.snapshot.deployments)
            body = hop_prompts.completion_body(composite, payload, text, context)
            answer = await run.ask(large, "completion", body, hop_prompts.shape(composite, text, shape))
            extra.append((b"x-portfolio-answered-by", large.name.encode()))
            chat = hop_prompts.as_chat(answer, run.first.name)
            await send_answer(send, run.request_id, kind, chat, shape, extra)
            return
        await run.final(receive, send, large, kind, payload, shape, extra)
        return
    kept = _asked_logprobs(kind, payload)
    answer = dict(answer, model=run.first.name, choices=[_strip_logprobs(c, kept) for c in answer["choices"]])
    extra = [(b"x-portfolio-answered-by", small.name.encode()), (b"x-portfolio-escalated", b"false"), told]
    await send_answer(send, run.request_id, kind, answer, shape, extra)


async def _vote(run: Run, send, composite: Composite, found, kind, payload, shape, text: str) -> None:
    sampler = found[composite.sampler]
    body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options", "n", "best_of")}
    body["n"] = composite.n
    body.setdefault("temperature", composite.temperature)
    if composite.method == "best_of_n":
        body = with_logprobs(kind, body)
    answer = await run.ask(sampler, kind, body, shape._replace(choices=composite.n, n=composite.n))
    choices = answer["choices"]
    judged = []
    if composite.method == "verifier":
        firsts = voting.distinct_answers(choices)
        said = await verifier.verdicts(
            run, found[composite.verifier], composite, text, [voting.answer_text(choices[i]) for i in firsts]
        )
        index, accepted = voting.verified_pick(choices, dict(zip(firsts, said, strict=True)))
        judged = [(b"x-portfolio-verdict", verifier.shown(accepted))]
    elif composite.method == "best_of_n":
        index = voting.best_of_n(choices)
    else:
        index = voting.majority(choices)
    votes = round(voting.agreement(choices, index) * len(choices))
    chosen = dict(_strip_logprobs(choices[index], _asked_logprobs(kind, payload)), index=0)
    # The usage shown is every sample's: each was billed.
    answer = dict(answer, model=run.first.name, choices=[chosen])
    extra = [
        (b"x-portfolio-answered-by", sampler.name.encode()),
        (b"x-portfolio-votes", f"{votes}/{len(choices)}".encode()),
        *judged,
    ]
    await send_answer(send, run.request_id, kind, answer, shape, extra)


async def settle(gateway, key: KeyRecord, reservation, run: Run) -> None:
    """Give back what was not used of the reservation, and write every hop's usage event, in one round trip."""
    ended = time.perf_counter()
    latencies = [(end or ended) - begin for begin, end in run.spans]
    events, tokens, money, team_micros, department_micros = [], 0, 0, 0, 0
    for outcome, latency in zip(run.outcomes, latencies, strict=True):
        hop = outcome.answered or outcome.first
        assert hop is not None, "every hop names its endpoint"
        cost = price_micros(hop, outcome.input_tokens, outcome.output_tokens)
        events.append(usage_event(key, outcome, latency, cost))
        tokens += outcome.input_tokens + outcome.output_tokens
        money += cost
        team, department = admission.charged(key, hop, cost)
        team_micros, department_micros = team_micros + team, department_micros + department
    commands = gateway.limiter.settle(
        reservation,
        tokens=tokens,
        money_micros=money,
        team_micros=team_micros,
        department_micros=department_micros,
    )
    commands += [("XADD", USAGE_STREAM, "*", "e", orjson.dumps(event)) for event in events]
    await gateway._write(commands)
    for outcome, latency in zip(run.outcomes, latencies, strict=True):
        gateway._observe(key, outcome, latency)
