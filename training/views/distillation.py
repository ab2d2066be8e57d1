"""The distillation start form: a teacher endpoint answers a prompt dataset, a student is trained on the
answers. The job it starts is a fine-tuning job with a teacher; its page is the job page."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.formviews import submit
from serving.models import Endpoint
from training import finetune
from training.forms.distillation import DistillationStartForm
from training.forms.jobs import HYPERPARAMETER_FIELDS
from training.models import DatasetVersion, FineTuneJob

# The service names the student and the prompts as a fine-tune's base and dataset in its refusals.
SERVICE_FIELDS = {
    "base_version": "student",
    "dataset_version": "prompts",
    **{f"hyperparameters.{name}": name for name in HYPERPARAMETER_FIELDS},
}


@require_http_methods(["GET", "POST"])
def distillation_create(request):
    """Permission: ``training.run`` in some team (owner or engineer), else 403. On POST, the teacher
    endpoint and the prompt dataset version chosen must be visible (else 404), the teacher callable
    (``endpoint.call``) and the prompts' team one the actor trains in (else 403). The service's refusals
    (a teacher of another team, no ready node, a hyperparameter out of range) show as form errors."""
    actor = actor_of(request)
    gate.require(actor, "training.run")
    if request.method == "POST":
        if request.POST.get("teacher"):
            teacher = gate.get_visible(actor, Endpoint, name=request.POST["teacher"])
            gate.require(actor, "endpoint.call", teacher)
        if request.POST.get("prompts"):
            prompts = gate.get_visible(actor, DatasetVersion, pk=request.POST["prompts"])
            gate.require(actor, "training.run", prompts)
        form = DistillationStartForm(request.POST, actor=actor)
    else:
        initial = {
            key: request.GET[key] for key in ("teacher", "prompts", "student", "pool") if request.GET.get(key)
        }
        form = DistillationStartForm(initial=initial, actor=actor)

    def start() -> FineTuneJob:
        data = form.cleaned_data
        return finetune.start_distillation(
            actor=actor,
            teacher=data["teacher"],
            prompts=data["prompts"],
            student=data["student"],
            pool=data["pool"],
            hyperparameters=form.hyperparameters(),
            target_model=data["target_model"],
        )

    queued = submit(
        request,
        form,
        start,
        success=lambda job: (
            f"Distillation #{job.pk} queued on {job.placed_on}: {job.teacher_endpoint.name} answers the "
            "prompts first, then the student trains."
        ),
        then=lambda job: redirect("job-detail", job_id=job.pk),
        fields=SERVICE_FIELDS,
    )
    if queued is not None:
        return queued
    return render(request, "training/distillation_form.html", {"form": form})
