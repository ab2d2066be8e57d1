"""Forms of the portfolio page: a task's production endpoint, and the canary of a hinted candidate. They
only parse input: the changes go through training.evals.portfolio."""

from __future__ import annotations

from django import forms

from portfolio.formfields import optional_choice
from serving.models import Endpoint
from training.evals.models import Task


class ProductionForm(forms.Form):
    endpoint = optional_choice(
        Endpoint,
        label="Production endpoint",
        empty_label="None (not in production)",
        help_text="The endpoint that serves this task's calls: one its team may call.",
    )

    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoint"].queryset = Endpoint.objects.callable_by(task.owner_team).order_by("name")


class CanaryForm(forms.Form):
    candidate = forms.CharField(max_length=63)
