"""Composite endpoints on the hot path: a router, a cascade and test-time compute, behind the one name a
client calls (their decisions are voting.py's pure functions; their configs, serving/services/composite.py).

Contract, as for plain endpoints (app.py): PostgreSQL is never touched per request, the config rides in the
routing table. Every hop is a plain endpoint the key must be allowed to call itself (team, shares, scopes):
one it may not is refused before anything runs, naming it; each follows its fallbacks as the key's own call
to it would (access.chain). Admission reserves the worst case of all the hops a request may make (the sum
of its steps, each step its costliest choice, fallbacks included: hop_admission.py); each hop is then
metered as a usage event of its own (``via`` the composite), priced by the endpoint that answered, and the
reservation is settled once with their sum. A failure after a hop was billed tells the client not to send
the request again (``x-should-retry: false``): the openai SDKs would, twice, billed for those hops each
time. The final hop streams as a plain call does; an answer the gateway picked itself (a cascade's small
answer kept, a vote's winner) is sent whole, or as a valid server-sent-event stream when the client asked
for one. Response headers say which endpoint answered (a hop, or a fallback of it) and why:
``x-portfolio-answered-by``, ``x-portfolio-route-label``, ``x-portfolio-escalated`` (with
``x-portfolio-confidence``, or ``x-portfolio-verdict`` when a verifier judged), ``x-portfolio-votes``. A
verifier's questions (verifier.py) are hops like the others; a vote's run at once.
"""

from __future__ import annotations

import logging
import time

import orjson

from serving.gateway import admission, hop_ids, hop_prompts, keystate, payloads, verifier, voting
from serving.gateway.answers import Capture, never_disconnects, send_answer
from serving.gateway.errors import GatewayError
from serving.gateway.events import USAGE_STREAM, Outcome, usage_event
from serving.gateway.hop_admission import (
    ChainOf,
    alone,
    asked_context,
    chains_for,
    hops,
    reservation,
    spend_caps,
)
from serving.gateway.keycache import KeyRecord
from serving.gateway.routing import Composite, EndpointInfo, price_micros

logger = logging.getLogger(__name__)


class Run:
    """One request to a composite endpoint: its hops in order, each with its outcome."""

    def __init__(
        self,
        gateway,
        request_id: str,
        caller,
        first: EndpointInfo,
        event_id: str,
        started: float,
        chains: ChainOf = alone,
        deployments: dict | None = None,
    ):
        self.gateway, self.request_id, self.caller, self.first = gateway, request_id, caller, first
        self.event_id, self.started, self.chains = event_id, started, chains
        # The deployments of the table the request was admitted by (its chains'): contexts as reserved.
        self.deployments = deployments
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

    def asked_context(self, hop: EndpointInfo) -> int:
        """The context a classifier's or verifier's question to ``hop`` must fit, as reserved."""
        deployments = self.gateway.snapshot.deployments if self.deployments is None else self.deployments
        return asked_context(hop, self.chains, deployments)

    def billed(self) -> bool:
        """Whether a hop was billed so far (tokens counted, or a worst case for an engine that had it)."""
        return any(o.input_tokens or o.output_tokens or o.worst_case for o in self.outcomes)

    def answered_by(self) -> bytes:
        """The endpoint that answered the last hop asked (the hop, or one of its fallbacks: forwarding names
        it in the outcome), for a header."""
        return self.outcomes[-1].endpoint.encode()

    def _unready(self, exc: GatewayError, hop: EndpointInfo) -> None:
        # forwarding names the model the client sees, here the composite: the hop (and its fallbacks) had
        # none.
        if exc.code == "no_replica_available":
            exc.message = (
                f"No replica of `{hop.name}` (called by `{self.first.name}`) is ready to serve (or all "
                "failed to connect)."
            )

    async def ask(self, hop: EndpointInfo, kind: str, body: dict, shape: payloads.Shape) -> dict:
        """An intermediate hop's answer, read whole (its errors become the client's, naming the hop)."""
        outcome = self._outcome(hop, kind, shape._replace(stream=False))
        span = self.spans[-1]
        capture = Capture()
        try:
            await self.gateway._dispatch(
                never_disconnects,
                capture,
                self.request_id,
                self.chains(hop, kind, shape.choices),
                hop.name,
                body,
                outcome,
                self.started,
                self.caller,
            )
        except GatewayError as exc:
            self._unready(exc, hop)
            raise
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
        billed = self.billed()
        outcome = self._outcome(hop, kind, shape)

        async def answering(message: dict) -> None:
            # Headers said once the answering endpoint is known: the hop, or a fallback of it.
            if message["type"] == "http.response.start":
                said = [(b"x-portfolio-answered-by", outcome.endpoint.encode()), *extra]
                if billed and message["status"] != 200:  # an engine's error, after billed hops
                    said.append((b"x-should-retry", b"false"))
                message = dict(message, headers=[*message["headers"], *said])
            await send(message)

        try:
            await self.gateway._dispatch(
                receive,
                answering,
                self.request_id,
                self.chains(hop, kind, shape.choices),
                self.first.name,
                payload,
                outcome,
                self.spans[-1][0],  # its time to first token is its own, as its latency is
                self.caller,
            )
        except GatewayError as exc:
            self._unready(exc, hop)
            raise


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
    chain_of = chains_for(snapshot, key, gateway._cut_fallbacks)
    tokens, money, priced = reservation(
        composite, found, shape, text, kind, chains=chain_of, deployments=snapshot.deployments
    )
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
    run = Run(
        gateway, request_id, (key.key_id, headers), first, event_id, started, chain_of, snapshot.deployments
    )
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
        exc.billed = exc.billed or run.billed()  # (errors.py) hops billed already are not to be billed again
        raise
    except Exception:
        _failed(run, 500, "internal")
        if not run.billed():
            raise
        # As app.py answers a bug, and telling the client not to send again what it was billed for.
        logger.exception("gateway: request %s failed", request_id)
        error = GatewayError(500, f"Internal gateway error (request {request_id}).", "internal")
        error.metered = error.billed = True
        raise error from None
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
        context = run.asked_context(classifier)
        asked_kind, asked = hop_prompts.classifier_request(composite, classifier, context, text)
        # Billed as reserved: its own small question, not the client's request (whose worst case, should
        # the classifier fail, would be billed at the classifier's price).
        asked_shape = hop_prompts.classifier_shape(composite, context, text)
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
    small_by = run.answered_by()
    if judged:
        checker = found[composite.verifier]
        said = await verifier.verdicts(
            run,
            checker,
            run.asked_context(checker),
            composite,
            text,
            [voting.answer_text(answer["choices"][0])],
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
            chain = run.chains(large, "completion", 1)
            context = hop_prompts.smallest_context(chain, run.gateway.snapshot.deployments)
            body = hop_prompts.completion_body(composite, payload, text, context)
            answer = await run.ask(large, "completion", body, hop_prompts.shape(composite, text, shape))
            extra.append((b"x-portfolio-answered-by", run.answered_by()))
            chat = hop_prompts.as_chat(answer, run.first.name)
            await send_answer(send, run.request_id, kind, chat, shape, extra)
            return
        await run.final(receive, send, large, kind, payload, shape, extra)
        return
    kept = _asked_logprobs(kind, payload)
    answer = dict(answer, model=run.first.name, choices=[_strip_logprobs(c, kept) for c in answer["choices"]])
    extra = [(b"x-portfolio-answered-by", small_by), (b"x-portfolio-escalated", b"false"), told]
    await send_answer(send, run.request_id, kind, answer, shape, extra)


async def _vote(run: Run, send, composite: Composite, found, kind, payload, shape, text: str) -> None:
    sampler = found[composite.sampler]
    body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options", "n", "best_of")}
    body["n"] = composite.n
    body.setdefault("temperature", composite.temperature)
    if composite.method == "best_of_n":
        body = with_logprobs(kind, body)
    answer = await run.ask(sampler, kind, body, shape._replace(choices=composite.n, n=composite.n))
    sampled_by = run.answered_by()
    choices = answer["choices"]
    judged = []
    if composite.method == "verifier":
        firsts = voting.distinct_answers(choices)
        checker = found[composite.verifier]
        said = await verifier.verdicts(
            run,
            checker,
            run.asked_context(checker),
            composite,
            text,
            [voting.answer_text(choices[i]) for i in firsts],
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
        (b"x-portfolio-answered-by", sampled_by),
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
