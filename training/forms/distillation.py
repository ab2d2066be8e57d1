"""The distillation start form: a teacher endpoint answers a prompt dataset, then a student trains on
the answers. It only parses input: the job starts in training.finetune."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.registry.models import ModelVersion
from serving.forms.base import VersionChoiceField as ServingVersionChoiceField
from serving.forms.base import ready_bases
from serving.models import Endpoint
from training.forms.jobs import (
    DatasetVersionChoiceField,
    TrainingStartForm,
    check_target,
    trainable_dataset_versions,
)
from training.models import DatasetVersion


def teacher_endpoints(actor: Actor):
    """Endpoints the actor may call, of the teams they may train in: the teacher is called with a
    service key of the job's team (the dataset's), so its calls are billed to that team."""
    return (
        gate.allowed(actor, Endpoint, "endpoint.call")
        .filter(owner_team__in=gate.allowed(actor, Team, "training.run"))
        .select_related("owner_team")
        .order_by("name")
    )


class EndpointChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Endpoint) -> str:
        return f"{obj.name} · {obj.owner_team.name}"


class DistillationStartForm(TrainingStartForm):
    """Stage one asks the teacher endpoint to answer the prompt dataset through the gateway; stage two
    fine-tunes the student (LoRA) on the answers. Field names are the service's arguments."""

    teacher = EndpointChoiceField(
        label="Teacher endpoint",
        queryset=Endpoint.objects.none(),
        to_field_name="name",
        empty_label="Choose an endpoint",
        help_text="A bigger model already deployed, behind an endpoint of your team that you may call. It is "
        "called through the gateway with a service key of the team: metered and billed like any call.",
    )
    prompts = DatasetVersionChoiceField(
        label="Prompt dataset version",
        queryset=DatasetVersion.objects.none(),
        empty_label="Choose a dataset version",
        help_text="The teacher answers every row's prompt (its own answers are ignored); the answers become a "
        "new dataset version, trained on and scored on its held-out rows.",
    )
    student = ServingVersionChoiceField(
        label="Student base version",
        queryset=ModelVersion.objects.none(),
        empty_label="Choose a ready base version",
        help_text="The smaller model trained to answer like the teacher.",
    )
    preselected = ("teacher", "pool")
    target_empty_label = "The student's model"
    target_help = "A model you may register versions of; the new version records its teacher and prompts."

    def querysets(self, actor: Actor) -> dict[str, QuerySet]:
        return {
            "teacher": teacher_endpoints(actor),
            "prompts": trainable_dataset_versions(actor),
            "student": ready_bases(actor),
        }

    def clean(self):
        data = super().clean()
        teacher, prompts = data.get("teacher"), data.get("prompts")
        if (
            teacher is not None
            and prompts is not None
            and teacher.owner_team_id != prompts.dataset.owner_team_id
        ):
            self.add_error(
                "teacher",
                f"{teacher.name} belongs to {teacher.owner_team.name}, the prompts to "
                f"{prompts.dataset.owner_team.name}: the teacher must be an endpoint of the dataset's team "
                "(its calls are billed to it).",
            )
        check_target(self, data.get("student"), data.get("target_model"))
        return data
