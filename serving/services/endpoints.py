"""Endpoints: the stable names clients call, routed by weight to deployments or adapters, with a fallback
endpoint of the same team; and shared by their owners with other teams, a department or the organisation,
whose keys may then call them (each caller's team pays for its own calls)."""

from __future__ import annotations

import re
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department, Team
from portfolio.audit import services as audit
from portfolio.errors import Conflict, Invalid, NotFound
from serving.choices import RolloutState
from serving.models import Endpoint, EndpointShare
from serving.services import composite, locks
from serving.services.endpoint_routes import resolve_routes, write_routes
from serving.services.route_kinds import MAX_ROUTES as MAX_ROUTES  # the API's bound, long imported from here
from serving.services.shared import _check_name

MAX_DESCRIPTION = 2000
# Other apps register "what would deleting this endpoint take from us?" checks (training: the tasks it serves
# in production), each returning a refusal ("<endpoint> is ...; do this first") or None. Called by
# ``delete_endpoint`` with the endpoint's row locked: a use committed before the lock is seen, and one that
# refers to the endpoint after it waits for the delete and finds it gone.
IN_USE_CHECKS: list[Callable[[Endpoint], str | None]] = []


def _fallback(actor: Actor, team: Team, fallback: Endpoint | None) -> Endpoint | None:
    """The fallback of one of ``team``'s endpoints: an endpoint of the same team. The gateway follows a
    fallback with the caller's key and bills it to the caller's team, so another team's endpoint (one the
    actor merely sees, as a viewer there) would hand that team's models to this team's keys."""
    if fallback is None:
        return None
    # Read again under the team's lock (set_routes, create_endpoint): as stored now, not as the caller saw it.
    found = gate.visible(actor, Endpoint).filter(pk=fallback.pk).first()
    if found is None:  # deleted since the caller chose it: the edited endpoint is there, its fallback is not
        raise Invalid(
            f"fallback: no endpoint {fallback.name!r} visible to you.",
            fields={"fallback": ["Choose an endpoint that still exists."]},
        )
    fallback = found
    if fallback.kind != "plain":
        raise Invalid(
            f"fallback: {fallback.name} is a {fallback.kind} endpoint; a fallback is a plain endpoint.",
            fields={"fallback": ["Choose a plain endpoint."]},
        )
    if fallback.owner_team_id != team.pk:
        raise Invalid(
            f"fallback: {fallback.name} belongs to another team; an endpoint falls back to an endpoint of its "
            f"own team ({team.name}) only.",
            fields={"fallback": [f"Choose an endpoint of {team.name}."]},
        )
    return fallback


MAX_N_DEFAULT, MAX_N_CEILING = 8, 128  # as Endpoint.max_n's default and validators


def _check_max_n(value: int) -> int:
    # Each completion is reserved for and billed: the cap bounds what one call can hold of a budget.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N_CEILING:
        raise Invalid(
            f"max_n: between 1 and {MAX_N_CEILING} completions per prompt.",
            fields={"max_n": [f"Between 1 and {MAX_N_CEILING}."]},
        )
    return value


# An HTTP header name (RFC 9110 token characters), bounded; headers that carry credentials pick no variant.
STICKY_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")
STICKY_REFUSED = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


def _check_sticky(sticky_by: str, sticky_header: str | None) -> tuple[str, str]:
    """(sticky_by, header name in lower case, or "" unless by header)."""
    choices = {"none", "api_key", "header"}
    if sticky_by not in choices:
        raise Invalid(
            "sticky_by: none, api_key or header.", fields={"sticky_by": ["Choose none, api_key or header."]}
        )
    if sticky_by != "header":
        return sticky_by, ""
    header = (sticky_header or "").strip()
    if not STICKY_HEADER.match(header):
        raise Invalid(
            "sticky_header: a header name of 1 to 64 letters, digits or !#$%&'*+.^_`|~- (no spaces or colons).",
            fields={"sticky_header": ["A header name such as X-User-Id."]},
        )
    if header.lower() in STICKY_REFUSED:
        raise Invalid(
            f"sticky_header: {header} carries credentials; name a header that identifies the client instead.",
            fields={"sticky_header": ["Not a header that carries credentials."]},
        )
    return sticky_by, header.lower()


@transaction.atomic
def create_endpoint(
    *,
    actor: Actor,
    name: str,
    team: Team,
    routes: list[dict],
    description: str = "",
    fallback: Endpoint | None = None,
    max_n: int = MAX_N_DEFAULT,
    kind: str = "plain",
    config: dict | None = None,
) -> Endpoint:
    """A plain endpoint routing by weight to ``routes``, or (``kind`` router, cascade or vote) a composite
    one calling the plain endpoints its ``config`` names (composite.check_config), with no routes of its own."""
    gate.require(actor, "deployment.manage", team)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description: at most {MAX_DESCRIPTION} characters.")
    composite.lock_calls_of(team.pk)  # its config's hops, or its fallback, checked as they stay
    checked = composite.check_config(team, name, kind, config or {})
    if kind == "plain":
        resolved = resolve_routes(actor, team, routes)
    elif routes or fallback is not None:
        raise Invalid(
            f"routes: a {kind} endpoint calls the endpoints its config names; it has no routes or fallback.",
            fields={"routes": ["Leave empty for a composite endpoint."]},
        )
    else:
        resolved = []
    fallback = _fallback(actor, team, fallback)
    endpoint = Endpoint(
        name=_check_name(name),
        owner_team=team,
        description=description,
        fallback=fallback,
        max_n=_check_max_n(max_n),
        kind=kind,
        config=checked,
    )
    try:
        with transaction.atomic():
            endpoint.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"An endpoint named {name!r} already exists.") from None
    write_routes(endpoint, resolved)
    audit.record(actor, "endpoint.create", endpoint, after=endpoint.snapshot())
    return endpoint


@transaction.atomic
def set_routes(
    *,
    actor: Actor,
    endpoint: Endpoint,
    routes: list[dict],
    fallback: Endpoint | None = None,
    max_n: int | None = None,
    sticky_by: str | None = None,
    sticky_header: str | None = None,
) -> Endpoint:
    """Change an endpoint's weights (canary, A/B), fallback, completions cap and sticky assignment
    (``None``: unchanged); audited with before and after."""
    gate.require(actor, "deployment.manage", endpoint)
    # The team's lock, as configure_endpoint and delete_endpoint take it, before the endpoint's: the fallback
    # chain is checked against no other uncommitted edit (two fallbacks set at once made a loop), and the
    # fallback is not made composite or deleted meanwhile; then max_n against the votes that ask it.
    composite.lock_calls_of(endpoint.owner_team_id)
    endpoint = locks.endpoint(endpoint.pk)
    if endpoint.kind != "plain":
        raise Invalid(
            f"routes: {endpoint.name} is a {endpoint.kind} endpoint: change its config instead "
            "(PUT .../config), or make it plain there first."
        )
    resolved = resolve_routes(actor, endpoint.owner_team, routes)
    composite.require_text_for_callers(endpoint, (deployment for deployment, _, _ in resolved))
    fallback = _fallback(actor, endpoint.owner_team, fallback)
    if fallback is not None:
        chain: set[int] = {endpoint.pk}
        current: Endpoint | None = fallback
        while current is not None:
            if current.pk in chain:
                raise Invalid("fallback: that would make a fallback loop.")
            chain.add(current.pk)
            current = current.fallback
    before = endpoint.snapshot()
    write_routes(endpoint, resolved)
    endpoint.fallback = fallback
    if max_n is not None:
        endpoint.max_n = _check_max_n(max_n)
        composite.require_max_n_for_votes(endpoint, endpoint.max_n)
    if sticky_by is not None:
        endpoint.sticky_by, endpoint.sticky_header = _check_sticky(sticky_by, sticky_header)
    endpoint.save(update_fields=["fallback", "max_n", "sticky_by", "sticky_header"])
    audit.record(actor, "endpoint.routes", endpoint, before=before, after=endpoint.snapshot())
    return endpoint


@transaction.atomic
def delete_endpoint(*, actor: Actor, endpoint: Endpoint) -> None:
    gate.require(actor, "deployment.manage", endpoint)
    composite.lock_calls_of(endpoint.owner_team_id)
    endpoint = locks.endpoint(endpoint.pk)  # deleted meanwhile: not found, not audited as deleted twice
    composite.require_not_called(endpoint, "delete it")
    judged = endpoint.judged_rollouts.filter(state=RolloutState.CANARY).select_related("endpoint").first()
    if judged is not None:
        raise Conflict(
            f"{endpoint.name} judges the rollout under way on {judged.endpoint.name}; let it finish or abort it "
            "first, then delete it."
        )
    # Deleting it would take the rollout with it (CASCADE): never aborted, with no audit row of its end.
    canary = endpoint.rollouts.filter(state=RolloutState.CANARY).first()
    if canary is not None:
        raise Conflict(
            f"{endpoint.name} has a rollout under way (a canary of {canary.target}); let it finish or abort "
            "it first, then delete it."
        )
    # Deleting it would quietly take their fallback away (SET_NULL), with no audit row for them.
    falling_back = sorted(Endpoint.objects.filter(fallback=endpoint).values_list("name", flat=True))
    if falling_back:
        raise Conflict(
            f"{', '.join(falling_back)} {'fall' if len(falling_back) > 1 else 'falls'} back to {endpoint.name}; "
            f"change {'their' if len(falling_back) > 1 else 'its'} fallback first, then delete it."
        )
    refusals = [refusal for check in IN_USE_CHECKS if (refusal := check(endpoint))]
    if refusals:
        raise Conflict(f"{'; '.join(refusals)}, then delete it.")
    audit.record(actor, "endpoint.delete", endpoint, before=endpoint.snapshot())
    try:
        endpoint.delete()
    except ProtectedError as exc:  # rows of other apps that still need it (a distillation asking its teacher)
        users = ", ".join(sorted(str(row) for row in exc.protected_objects))
        raise Conflict(f"{endpoint.name} is in use by {users}; delete it once that has finished.") from None


def _share_target(
    endpoint: Endpoint, team: Team | None, department: Department | None, organisation: bool
) -> tuple[dict, str]:
    """The share's lookup (exactly one target) and how to name it in a message."""
    given = (team is not None) + (department is not None) + bool(organisation)
    if given != 1:
        raise Invalid(
            "target: name exactly one of a team, a department or the organisation.",
            fields={"target": ["Choose one team, one department, or the organisation."]},
        )
    if team is not None:
        if team.pk == endpoint.owner_team_id:
            raise Invalid(
                f"team: {team.name} owns {endpoint.name}; its keys call it already.",
                fields={"team": ["The owning team calls it already."]},
            )
        return {"team": team, "department": None, "organisation": False}, f"team {team.name}"
    if department is not None:
        return {
            "team": None,
            "department": department,
            "organisation": False,
        }, f"department {department.name}"
    return {"team": None, "department": None, "organisation": True}, "the organisation"


@transaction.atomic
def share_endpoint(
    *,
    actor: Actor,
    endpoint: Endpoint,
    team: Team | None = None,
    department: Department | None = None,
    organisation: bool = False,
) -> EndpointShare:
    """Let the keys of ``team``, of every team of ``department``, or of every team (``organisation``) call
    ``endpoint``; their calls stay metered to their own team and department. Teams and departments are the
    organisation's to name: any that exists may be chosen, not only those the actor is a member of."""
    gate.require(actor, "endpoint.share", endpoint)
    # Serialises changes to one endpoint's shares: the audit's before and after are then each whole.
    endpoint = locks.endpoint(endpoint.pk)
    lookup, named = _share_target(endpoint, team, department, organisation)
    before = endpoint.snapshot()
    share = EndpointShare(endpoint=endpoint, created_by=actor.user, **lookup)
    try:
        with transaction.atomic():
            share.save(force_insert=True)
    except IntegrityError:
        raise Conflict(f"{endpoint.name} is already shared with {named}.") from None
    audit.record(actor, "endpoint.share", endpoint, before=before, after=endpoint.snapshot())
    return share


@transaction.atomic
def unshare_endpoint(
    *,
    actor: Actor,
    endpoint: Endpoint,
    team: Team | None = None,
    department: Department | None = None,
    organisation: bool = False,
) -> None:
    """Withdraw one share: the gateway refuses those callers from its next routing refresh (a second)."""
    gate.require(actor, "endpoint.share", endpoint)
    endpoint = locks.endpoint(endpoint.pk)
    lookup, named = _share_target(endpoint, team, department, organisation)
    share = EndpointShare.objects.filter(endpoint=endpoint, **lookup).first()
    if share is None:
        raise NotFound(f"{endpoint.name} is not shared with {named}.")
    before = endpoint.snapshot()
    share.delete()
    audit.record(actor, "endpoint.unshare", endpoint, before=before, after=endpoint.snapshot())
