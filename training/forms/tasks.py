"""Forms of the task pages: a new task, an eval set of a task, an eval run of an endpoint. They only parse
input: every change goes through training.evals (catalogue, runs)."""

from __future__ import annotations

from django import forms

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.formfields import optional_choice
from serving.models import Endpoint
from training.choices import EvalSetSource, TaskKind
from training.evals import judging, runs
from training.evals.models import EvalSet, Task
from training.models import DatasetVersion


class TaskForm(forms.Form):
    name = forms.CharField(label="Name", max_length=120, min_length=2)
    owner_team = forms.ModelChoiceField(
        label="Owner team", queryset=Team.objects.none(), empty_label="Choose a team"
    )
    kind = forms.ChoiceField(
        label="Kind", choices=TaskKind.choices, help_text="Decides how answers are scored."
    )
    description = forms.CharField(label="Description", required=False, max_length=5000, widget=forms.Textarea)

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["owner_team"].queryset = gate.allowed(actor, Team, "training.run").order_by("name")


class EvalSetForm(forms.Form):
    dataset_version = forms.ModelChoiceField(
        label="Dataset version",
        queryset=DatasetVersion.objects.none(),
        empty_label="Choose a dataset version",
    )
    source = forms.ChoiceField(label="Rows", choices=EvalSetSource.choices, initial=EvalSetSource.EVAL_ROWS)

    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].queryset = (
            DatasetVersion.objects.filter(dataset__owner_team_id=task.owner_team_id)
            .select_related("dataset")
            .order_by("dataset__name", "-number")
        )
        self.fields["dataset_version"].label_from_instance = lambda v: v.label


class EvalRunForm(forms.Form):
    endpoint = forms.ModelChoiceField(
        label="Endpoint",
        queryset=Endpoint.objects.none(),
        empty_label="Choose an endpoint",
        help_text="Called through the gateway with a key of the task's team: metered and billed to it.",
    )
    eval_set = forms.ModelChoiceField(label="Eval set", queryset=EvalSet.objects.none(), empty_label=None)
    row_limit = forms.IntegerField(
        label="Rows at most", min_value=1, max_value=runs.MAX_ROWS, initial=runs.DEFAULT_ROWS
    )
    concurrency = forms.IntegerField(
        label="Requests in flight", min_value=1, max_value=runs.MAX_CONCURRENCY, initial=4
    )
    max_tokens = forms.IntegerField(label="Max tokens per answer", min_value=1, max_value=4096, initial=64)
    judge = optional_choice(
        Endpoint,
        label="Judge endpoint (optional)",
        empty_label="No judge",
        help_text="Scores each answer 1-5 against the rubric, through the gateway: billed to the task's team.",
    )
    rubric = forms.CharField(
        label="Rubric",
        required=False,
        max_length=judging.MAX_RUBRIC,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text='What the judge scores on, e.g. "Routes the ticket to the right queue and says why."',
    )

    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoint"].queryset = Endpoint.objects.callable_by(task.owner_team).order_by("name")
        self.fields["judge"].queryset = self.fields["endpoint"].queryset
        self.fields["eval_set"].queryset = task.eval_sets.select_related("dataset_version__dataset")
        self.fields["eval_set"].label_from_instance = lambda s: s.label
