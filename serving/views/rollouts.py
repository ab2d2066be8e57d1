"""Rollouts on an endpoint's page: the one under way (state, canary share, window end, figures, timeline)
and the last few, the form that starts one and the Abort button, for those who may change the routes."""

from __future__ import annotations

from django.db.models import Prefetch
from django.urls import reverse
from django.views.decorators.http import require_POST

from portfolio import buttons
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from serving import services
from serving.forms.rollouts import RolloutForm
from serving.models import Deployment, DeploymentAdapter, Endpoint, EndpointRoute

RECENT = 5  # finished rollouts shown under the one under way


def _candidates(actor: Actor, endpoint: Endpoint) -> list[Deployment]:
    return list(
        gate.visible(actor, Deployment)
        .filter(owner_team_id=endpoint.owner_team_id)
        .prefetch_related(Prefetch("adapters", queryset=DeploymentAdapter.objects.order_by("name")))
        .order_by("name", "id")
    )


def rollout_context(actor: Actor, endpoint: Endpoint, can_manage: bool, routes: list[EndpointRoute]) -> dict:
    """What the endpoint page shows of rollouts (``routes``: the current ones, with their shares)."""
    rollouts = list(endpoint.rollouts.order_by("-started_at", "-id")[: RECENT + 1])
    active = next((r for r in rollouts if r.active), None)
    if active is not None:
        active.max_error_points = f"{100 * active.max_error_rate_increase:g}"
        candidate = (active.deployment, active.adapter)
        active.share = next(
            (
                r.share_exact
                for r in routes
                if (r.deployment.name, r.adapter.name if r.adapter else "") == candidate
            ),
            "0",
        )
    return {
        "rollout": active,
        "past_rollouts": [r for r in rollouts if not r.active][:RECENT],
        "rollout_form": RolloutForm(deployments=_candidates(actor, endpoint))
        if can_manage and active is None
        else None,
    }


def _managed(request, name: str) -> tuple[Actor, Endpoint]:
    actor = actor_of(request)
    endpoint = gate.get_visible(actor, Endpoint, name=name)
    gate.require(actor, "deployment.manage", endpoint)
    return actor, endpoint


@require_POST
def rollout_start(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage``, as for editing the routes (else 403).
    Gives the candidate the canary share and starts watching it; audited as ``rollout.start``."""
    actor, endpoint = _managed(request, name)
    back = reverse("endpoint-detail", kwargs={"name": endpoint.name})
    form = RolloutForm(request.POST, deployments=_candidates(actor, endpoint))
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[f].label if f in form.fields else 'Form'}: {' '.join(str(m) for m in e)}"
            for f, e in form.errors.items()
        )
        return buttons.refuse(request, f"The rollout was not started. {problems}", back)
    return buttons.press(
        request,
        lambda: services.start_rollout(actor=actor, endpoint=endpoint, **form.policy()),
        success=lambda r: (
            f"Rollout of {r.target} started: {r.canary_percent}% of {endpoint.name}'s calls go to "
            f"it, watched until {r.ends_at:%H:%M} UTC."
        ),
        back=back,
    )


@require_POST
def rollout_abort(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Takes the canary's traffic
    away and gives the other routes their weights back (``services.rollouts._taken_out``); audited as
    ``rollout.abort``."""
    actor, endpoint = _managed(request, name)
    back = reverse("endpoint-detail", kwargs={"name": endpoint.name})
    reason = request.POST.get("reason", "").strip()[:500]
    return buttons.press(
        request,
        lambda: services.abort_rollout(actor=actor, endpoint=endpoint, reason=reason),
        success=lambda r: f"Rollout of {r.target} aborted: the canary gets no more calls.",
        back=back,
    )
