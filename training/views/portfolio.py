"""The portfolio page: every task the user sees, with its production endpoint, that endpoint's quality,
latency and cost on the task's eval set, its traffic, and a hint when a candidate would do as well for
less, with the button that starts a canary of it; and the form naming a task's production endpoint."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.buttons import press, refuse
from portfolio.formviews import submit
from training.evals import portfolio
from training.forms.portfolio import CanaryForm, ProductionForm


@require_GET
def portfolio_page(request):
    """Permission: any signed-in user; the rows are the tasks they see (``gate.visible``). The canary
    button shows to those who may change the production endpoint (``deployment.manage``)."""
    actor = actor_of(request)
    page = listing.paginate(request, portfolio.Rows(portfolio.visible_tasks(actor)))
    for row in page.object_list:
        row.can_canary = bool(
            row.hint and row.endpoint and gate.can(actor, "deployment.manage", row.endpoint)
        )
        row.can_edit = gate.can(actor, "training.run", row.task)
    context = {
        "page": page,
        "currency": settings.BILLING_CURRENCY,
        "margin": portfolio.hint_margin(),
        "traffic_days": portfolio.TRAFFIC_DAYS,
        "hx_target": "#portfolio-results",
    }
    return htmx.page_or_fragment(request, "training/portfolio.html", "training/portfolio_rows.html", context)


@require_http_methods(["GET", "POST"])
def portfolio_production(request, task_id: int):
    """Permission: the task visible (else 404) and ``training.run`` in its team (else 403); the endpoint one
    its team may call (the form offers only those)."""
    actor = actor_of(request)
    task = portfolio.row_for(actor, task_id).task
    gate.require(actor, "training.run", task)
    form = ProductionForm(
        request.POST if request.method == "POST" else None,
        task=task,
        initial={"endpoint": task.production_endpoint_id},
    )
    done = submit(
        request,
        form,
        lambda: portfolio.set_production_endpoint(
            actor=actor, task=task, endpoint=form.cleaned_data["endpoint"]
        ),
        success=lambda saved: (
            f"{saved.name} is served by {saved.production_endpoint.name} in production."
            if saved.production_endpoint
            else f"{saved.name} has no production endpoint now."
        ),
        then=lambda saved: redirect("portfolio"),
    )
    return done or render(request, "training/portfolio_production.html", {"task": task, "form": form})


@require_POST
def portfolio_canary(request, task_id: int):
    """Permission: the task visible (else 404), and ``deployment.manage`` on its production endpoint (else
    403, decided by serving's rollout service too). On success, the endpoint's page shows the rollout."""
    actor = actor_of(request)
    row = portfolio.row_for(actor, task_id)
    back = reverse("portfolio")
    form = CanaryForm(request.POST)
    if not form.is_valid():
        return refuse(request, "Choose a candidate to start a canary of.", back)
    candidate = form.cleaned_data["candidate"]
    return press(
        request,
        lambda: portfolio.start_canary(actor=actor, task=row.task, candidate=candidate),
        success=lambda made: (
            f"Canary of {candidate} started on {made.endpoint.name} at {made.canary_percent}%."
        ),
        back=back,
        # The endpoint's page shows the rollout under way.
        then=reverse("endpoint-detail", args=[row.endpoint.name]) if row.endpoint else None,
    )
