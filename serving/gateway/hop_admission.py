"""What a composite endpoint's request is checked and reserved for before it is admitted (composite.py runs
it): the plain endpoints it may call, each as the key's own call to it would be checked, with the fallbacks
each question to them may go on to (access.chain); and the worst case of every step, each step its costliest
hop or fallback, for the key's limits and the hard limits of its team and department (admission.py's rules
for plain calls, summed over the steps).

Contract, as composite.py's: no I/O, and nothing but the routing table in memory.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from serving.gateway import access, admission, hop_prompts, payloads, verifier
from serving.gateway.errors import GatewayError
from serving.gateway.keycache import KeyRecord
from serving.gateway.limits import SpendCaps
from serving.gateway.routing import Composite, EndpointInfo

# A hop's fallback chain for one question: (hop, the kind it is asked, completions asked) -> the hop and the
# fallbacks that question may go on to.
ChainOf = Callable[[EndpointInfo, str, int], list[EndpointInfo]]


def alone(hop: EndpointInfo, kind: str, choices: int) -> list[EndpointInfo]:
    """No fallbacks: the hop only."""
    return [hop]


def chains_for(snapshot, key: KeyRecord, cut_fallbacks: set[tuple[str, str]]) -> ChainOf:
    """Each hop's fallbacks as the key's own call to it follows them (access.chain), in the table the request
    was admitted by: the chains reserved for are the chains called, as a plain call's are."""

    def chain_of(hop: EndpointInfo, kind: str, choices: int) -> list[EndpointInfo]:
        return access.chain(snapshot, key, hop, choices, chat=kind == "chat", cut_fallbacks=cut_fallbacks)

    return chain_of


def asked_context(hop: EndpointInfo, chains: ChainOf, deployments: dict) -> int:
    """The context a classifier's or verifier's question must fit: the smallest over the hop and the
    fallbacks it is called through (any of them may answer; the hop's own is the largest of its routes')."""
    return hop_prompts.smallest_context(chains(hop, plain_kind(hop), 1), deployments)


def plain_kind(hop: EndpointInfo) -> str:
    """How a classifier or a verifier is asked: by chat, or by a plain prompt where it has no chat template."""
    return "completion" if hop.no_chat else "chat"


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
    composite: Composite,
    found: dict[str, EndpointInfo],
    shape: payloads.Shape,
    text: str,
    kind: str = "chat",
    *,
    chains: ChainOf = alone,
    deployments: dict | None = None,
) -> tuple[int, int, list[list[tuple[EndpointInfo, int]]]]:
    """Tokens and money (micros) for the worst case of every step, and each step's hops with their money
    (for the spend caps, which count another team's hops only: the costliest of a step may be free). A
    step's hops include their fallbacks (``chains``), as a plain call's reservation does (admission.py)."""
    steps: list[list[tuple[EndpointInfo, payloads.Shape, str]]] = []

    def context(hop: EndpointInfo) -> int:  # a classifier's or verifier's questions fit each of its chain
        return asked_context(hop, chains, deployments or {})

    if composite.kind == "router":
        classifier = found[composite.classifier]
        question = hop_prompts.classifier_shape(composite, context(classifier), text)
        steps.append([(classifier, question, plain_kind(classifier))])
        steps.append([(found[name], shape, kind) for name in {*composite.table.values(), composite.default}])
    elif composite.kind == "cascade":
        steps.append([(found[composite.small], shape, kind)])
        if composite.verifier:
            checker = found[composite.verifier]
            steps.append([(checker, verifier.shape(composite, context(checker), text), plain_kind(checker))])
        large = found[composite.large]
        if hop_prompts.applies(composite, kind, large.no_chat):
            steps.append([(large, hop_prompts.shape(composite, text, shape), "completion")])
        else:
            steps.append([(large, shape, kind)])
    else:
        steps.append([(found[composite.sampler], shape._replace(choices=composite.n, n=composite.n), kind)])
        if composite.verifier:  # at worst every sample a distinct answer, each asked about
            checker = found[composite.verifier]
            questions = verifier.shape(composite, context(checker), text, composite.n)
            steps.append([(checker, questions, plain_kind(checker))])
    tokens = money = 0
    priced: list[list[tuple[EndpointInfo, int]]] = []
    for step in steps:
        worst = [
            (
                reached,
                *payloads.worst_case(
                    s, reached.max_model_len, reached.input_micros_per_token, reached.output_micros_per_token
                ),
            )
            for hop, s, asked in step
            for reached in chains(hop, asked, s.choices)
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
