"""What every change of what an endpoint routes to checks (its routes, a deployment's version, a rollout's
canary): one kind of model behind one endpoint, and at most ``MAX_ROUTES`` routes. A module of its own:
rollouts cannot import ``shared`` (it reaches serving.tasks, which imports the rollouts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from portfolio.errors import Invalid
from serving.gateway.routing import SERVES

if TYPE_CHECKING:
    from serving.models import Deployment

MAX_ROUTES = 64  # weighted routes of one endpoint (the page's form offers 32)


def require_one_kind(deployments: Iterable[Deployment], field: str = "routes", endpoint: str = "") -> None:
    """One endpoint, one kind of call: the gateway picks a route by weight after checking the call's route
    (chat, embeddings, audio, rerank) against the endpoint's models. ``deployments``: an endpoint's, each
    with the version it would serve."""
    kinds = {SERVES.get(deployment.version.model.task, "text"): deployment for deployment in deployments}
    if len(kinds) > 1:
        named = ", ".join(f"{d.name} ({kind})" for kind, d in sorted(kinds.items()))
        whose = f"{endpoint}'s" if endpoint else "an endpoint's"
        raise Invalid(f"{field}: {whose} deployments must all serve one kind of model; got {named}.")
