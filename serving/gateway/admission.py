"""What a request reserves before it is admitted, and why admission said no, in words a client can act on.

The reservation is the worst case of the costliest hop the request may take (contexts and prices differ
along an endpoint's fallbacks); limits.Limiter admits it against the key's limits and budgets in Redis.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.gateway import payloads
from serving.gateway.errors import GatewayError
from serving.gateway.keycache import KeyRecord
from serving.gateway.limits import SpendCaps, Verdict
from serving.gateway.routing import EndpointInfo, Snapshot


def reservation(shape: payloads.Shape, chain: list[EndpointInfo]) -> tuple[int, int]:
    """Tokens and money (micros) to reserve: for the costliest hop the request may take."""
    bound_tokens = bound_money = 0
    for hop in chain:
        hop_tokens, hop_money = payloads.worst_case(
            shape, hop.max_model_len, hop.input_micros_per_token, hop.output_micros_per_token
        )
        bound_tokens, bound_money = max(bound_tokens, hop_tokens), max(bound_money, hop_money)
    return bound_tokens, bound_money


def spend_caps(
    snapshot: Snapshot,
    key: KeyRecord,
    shape: payloads.Shape,
    chain: list[EndpointInfo],
    cost_of: Callable[[EndpointInfo], int] | None = None,
):
    """The hard limits of the key's team and department (None when neither has one), each reserving the
    worst case of the hops its statement charges: the team's, those to another team's endpoints (own
    calls are free); the department's, those to another department's (a call between two of its teams
    charges one and credits the other the same). ``cost_of``: a hop's worst case in money where it is not
    the shape's tokens (an audio upload's seconds)."""
    team = snapshot.caps.get(("team", key.team_id))
    department = snapshot.caps.get(("department", key.department_id))
    if team is None and department is None:
        return None
    team_reserve = department_reserve = 0
    for hop in chain:
        if hop.team_id == key.team_id:
            continue
        if cost_of is not None:
            hop_money = cost_of(hop)
        else:
            _, hop_money = payloads.worst_case(
                shape, hop.max_model_len, hop.input_micros_per_token, hop.output_micros_per_token
            )
        hop_money = max(hop_money, AT_COST_RESERVE)
        team_reserve = max(team_reserve, hop_money)
        if hop.department_id != key.department_id:
            department_reserve = max(department_reserve, hop_money)
    return SpendCaps(
        key.team_id,
        key.department_id,
        team,
        department,
        team_reserve,
        department_reserve,
        snapshot.caps_month,
    )


# What a call to another team's endpoint reserves on a hard limit at least: one without a token price is
# charged at cost on the statements (its share of the compute, known at the month's end), so it must be
# refused once the counter is spent, though it adds nothing to it now. Settling gives it back.
AT_COST_RESERVE = 1


def charged(key: KeyRecord, endpoint: EndpointInfo, cost: int) -> tuple[int, int]:
    """What a call answered by ``endpoint`` costs, on their statements, the caller's team and its
    department (as spend_caps reserved it)."""
    team = cost if endpoint.team_id != key.team_id else 0
    return team, team if endpoint.department_id != key.department_id else 0


# What a client can change to make a refused request smaller: the field to name, and what to do.
LOWER_MAX_TOKENS = ("max_tokens", "lower max_tokens (or n, or the prompt)")
# An upload's reservation grows with its duration: its seconds, and the decoder's limit per 30 s (audio.py).
SHORTER_AUDIO = (
    "file",
    "send shorter audio, or set max_completion_tokens (each 30 s of it may be transcribed to the model's "
    "decoder limit)",
)


def refusal(
    key: KeyRecord,
    verdict: Verdict,
    tokens: int,
    money: int,
    *,
    playground: bool,
    remedy: tuple[str, str] = LOWER_MAX_TOKENS,
) -> GatewayError:
    """Why admission said no, in words a client can act on (the caller evicts a key found revoked)."""
    subject = "the prompt box (per user)" if playground else "this key"
    param, change = remedy
    if verdict.reason == "revoked":
        return GatewayError(401, "Invalid, expired or revoked API key.", "invalid_api_key")
    if verdict.reason == "rpm":
        return GatewayError(
            429,
            f"Rate limit reached for requests per minute on {subject}.",
            "rate_limit_exceeded",
            retry_after=max(1, verdict.retry_after),
        )
    if verdict.reason in ("team_budget", "department_budget"):
        whose = f"team {key.team}" if verdict.reason == "team_budget" else "this team's department"
        return GatewayError(
            429,
            f"The monthly budget of {whose} is a hard limit and this request could pass it "
            f"({_money(max(0, verdict.remaining))} left, up to {_money(money)} asked; requests in flight "
            f"hold part of it). {change[0].upper()}{change[1:]}, or ask for a higher budget.",
            "budget_exceeded",
            retry_after=verdict.retry_after,
        )
    if verdict.reason == "tpm":
        if key.tpm_limit is not None and tokens > key.tpm_limit:
            return GatewayError(
                429,
                f"This request could use up to {tokens} tokens, more than the limit of "
                f"{key.tpm_limit} tokens per minute on {subject}: {change}.",
                "rate_limit_exceeded",
                param=param,
            )
        return GatewayError(
            429,
            f"Rate limit reached for tokens per minute on {subject}.",
            "rate_limit_exceeded",
            retry_after=max(1, verdict.retry_after),
        )
    if verdict.remaining <= 0:
        what = "token budget" if verdict.reason == "budget" else "budget"
        return GatewayError(
            429,
            f"The monthly {what} of {subject} is used up (or held by requests in flight).",
            "insufficient_quota",
            retry_after=verdict.retry_after,
        )
    if verdict.reason == "budget":
        cost = f"could use up to {tokens} tokens, more than the {verdict.remaining} tokens left"
    else:
        cost = f"could cost up to {_money(money)}, more than the {_money(verdict.remaining)} left"
    return GatewayError(
        429,
        f"This request {cost} of the monthly budget of {subject}: {change}.",
        "insufficient_quota",
        param=param,
    )


def _money(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")
