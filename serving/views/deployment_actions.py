"""The buttons of a deployment's page: scale, stop, rolling restart and update, delete, adapters added and
removed, and the prompt box. Each needs the deployment visible (else 404) and its capability (else 403)."""

from __future__ import annotations

from django.urls import reverse
from django.views.decorators.http import require_POST

from portfolio import buttons, htmx
from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.errors import Conflict, Invalid
from serving import engine_args, playground, services
from serving.forms.deployment_actions import AdapterAddForm, ScaleForm, TryForm, UpdateVersionForm
from serving.models import Deployment, DeploymentAdapter
from serving.views.deployments import deployment_page, visible_deployment


def _managed(request, name: str) -> tuple[Actor, Deployment, str]:
    """The actor, the deployment they may manage, and its page to go back to."""
    actor = actor_of(request)
    deployment = visible_deployment(actor, name)
    gate.require(actor, "deployment.manage", deployment)
    return actor, deployment, reverse("deployment-detail", kwargs={"name": deployment.name})


@require_POST
def deployment_scale(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (owner or engineer, else 403)."""
    actor, deployment, back = _managed(request, name)
    form = ScaleForm(request.POST)
    if not form.is_valid():
        return buttons.refuse(request, "Replicas: a whole number from 0 to 64.", back)
    replicas = form.cleaned_data["replicas"]
    return buttons.press(
        request,
        lambda: services.scale(actor=actor, deployment=deployment, replicas=replicas),
        success=f"Scaling {deployment.name} to {replicas} replica(s).",
        back=back,
    )


@require_POST
def deployment_stop(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Scales to 0; the deployment
    and its adapters stay, ready to be scaled up again."""
    actor, deployment, back = _managed(request, name)
    return buttons.press(
        request,
        lambda: services.scale(actor=actor, deployment=deployment, replicas=0),
        success=f"Stopping {deployment.name}: its replicas shut down and endpoints stop routing to it.",
        back=back,
    )


@require_POST
def deployment_restart(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). A rolling restart: each new
    replica is ready before an old one stops."""
    actor, deployment, back = _managed(request, name)
    return buttons.press(
        request,
        lambda: services.restart(actor=actor, deployment=deployment),
        success=lambda restarted: (
            f"Rolling restart of {restarted.name} started (generation {restarted.generation})."
        ),
        back=back,
    )


@require_POST
def deployment_update(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403); the new version must be visible
    too. A rolling update to another ready base version."""
    actor, deployment, back = _managed(request, name)
    form = UpdateVersionForm(request.POST, actor=actor, deployment=deployment)
    if not form.is_valid():
        return buttons.refuse(request, "Choose a ready base version you can see.", back)
    return buttons.press(
        request,
        lambda: services.restart(actor=actor, deployment=deployment, version=form.cleaned_data["version"]),
        success=lambda updated: (
            f"Rolling {updated.name} to {updated.version.label}: old replicas serve until new ones are ready."
        ),
        back=back,
    )


@require_POST
def deployment_update_strategy(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). How rolling changes replace
    replicas: ``surge`` (a new one first) or ``replace`` (in place, for a pool with no room for one more)."""
    actor, deployment, back = _managed(request, name)
    strategy = request.POST.get("update_strategy", "")[:16]
    return buttons.press(
        request,
        lambda: services.set_update_strategy(actor=actor, deployment=deployment, strategy=strategy),
        success=lambda changed: (
            f"Rolling changes of {changed.name}: {changed.get_update_strategy_display()}."
        ),
        back=back,
    )


@require_POST
def deployment_replace_in_place(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). The rolling change under way goes
    on without a surge replica: one old replica stops, then its successor starts where it ran."""
    actor, deployment, back = _managed(request, name)
    return buttons.press(
        request,
        lambda: services.replace_in_place(actor=actor, deployment=deployment),
        success=lambda replacing: (
            f"Replacing {replacing.name}'s replicas in place: one old replica stops, then its successor starts."
        ),
        back=back,
    )


@require_POST
def deployment_delete(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Only a stopped deployment with
    no replicas left and no endpoint routing to it can be deleted."""
    actor, deployment, back = _managed(request, name)
    return buttons.press(
        request,
        lambda: services.delete_deployment(actor=actor, deployment=deployment),
        success=f"Deployment {deployment.name} deleted.",
        back=back,
        then="deployment-list",
    )


@require_POST
def adapter_add(request, name: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403); the adapter version must be a
    visible, ready adapter of the deployment's base version."""
    actor, deployment, back = _managed(request, name)
    form = AdapterAddForm(request.POST, actor=actor, deployment=deployment)
    if not form.is_valid():
        problems = " ".join(str(error) for errors in form.errors.values() for error in errors)
        return buttons.refuse(request, f"The adapter was not added: {problems}", back)
    enabled = engine_args.for_deployment(deployment)["enable_lora"]
    how = (
        "running replicas load it without a restart"
        if enabled
        else "a rolling restart turns LoRA serving on first, then replicas load it"
    )
    return buttons.press(
        request,
        lambda: services.add_adapter(
            actor=actor,
            deployment=deployment,
            adapter=form.cleaned_data["adapter"],
            name=form.cleaned_data["name"],
        ),
        success=lambda attached: f"Adapter {attached.name} added; {how}.",
        back=back,
    )


@require_POST
def adapter_remove(request, name: str, adapter: str):
    """Permission: visible (else 404) and ``deployment.manage`` (else 403). Refused while an endpoint
    routes to the adapter; an adapter the deployment does not serve is a message, as in the REST API."""
    actor, deployment, back = _managed(request, name)
    attached = (
        DeploymentAdapter.objects.select_related("deployment")
        .filter(deployment=deployment, name=adapter)
        .first()
    )
    if attached is None:
        # As the REST API answers: the deployment is there, it just serves no such adapter (any more).
        return buttons.refuse(request, f"{deployment.name} serves no adapter {adapter!r}.", back)
    return buttons.press(
        request,
        lambda: services.remove_adapter(actor=actor, attached=attached),
        success=f"Adapter {attached.name} removed; replicas unload it without a restart.",
        back=back,
    )


@require_POST
def deployment_try(request, name: str):
    """Permission: visible (else 404) and ``endpoint.call`` (owner, engineer or developer, else 403). One
    chat completion through the gateway (metered, rate-limited per user); the prompt and answer are shown,
    never stored."""
    actor = actor_of(request)
    deployment = visible_deployment(actor, name)
    gate.require(actor, "endpoint.call", deployment)
    adapter_names = list(deployment.adapters.order_by("name").values_list("name", flat=True))
    form = TryForm(request.POST, deployment=deployment, adapter_names=adapter_names)
    result, error = None, ""
    if form.is_valid():
        try:
            result = playground.try_prompt(
                actor=actor,
                deployment=deployment,
                prompt=form.cleaned_data["prompt"],
                model=form.cleaned_data["model"],
                max_tokens=form.cleaned_data["max_tokens"],
            )
        except (Invalid, Conflict) as exc:
            error = exc.message
    else:
        error = " ".join(
            f"{form[name].label}: {' '.join(str(e) for e in errors)}" for name, errors in form.errors.items()
        )
    if wants_fragment(request):
        return htmx.render(
            request, "serving/partials/try_result.html", {"try_result": result, "try_error": error}
        )
    return deployment_page(request, actor, deployment, try_form=form, try_result=result, try_error=error)
