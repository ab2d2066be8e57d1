"""Forms of the datasets pages: the list's filters, a new dataset and a version's upload. They only
parse input: every change goes through training.services."""

from __future__ import annotations

from django import forms

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.formfields import optional_choice
from portfolio.registry.choices import VersionStatus
from portfolio.registry.forms import VersionChoiceField
from portfolio.registry.models import ModelVersion
from training import splitting
from training.choices import DatasetKind
from training.models import Dataset


def tokenizer_versions(actor: Actor):
    """Ready versions the actor may see, whose tokenizer can measure a dataset (adapters use their base's)."""
    return (
        gate.visible(actor, ModelVersion)
        .filter(status=VersionStatus.READY)
        .select_related("model")
        .order_by("model__name", "-number")
    )


class DatasetFilterForm(forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=100,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Name or description", "autocomplete": "off"}
        ),
    )
    kind = forms.ChoiceField(
        label="Row shape", required=False, choices=[("", "Any shape"), *DatasetKind.choices]
    )
    team = forms.ModelChoiceField(
        label="Owner team",
        queryset=Team.objects.none(),
        required=False,
        to_field_name="slug",
        empty_label="Any team",
    )

    def __init__(self, *args, visible_datasets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = (
            Team.objects.filter(datasets__in=visible_datasets).distinct().order_by("name")
        )

    def apply(self, datasets):
        from django.db.models import Q

        data = self.cleaned_data
        if data["q"]:
            query = data["q"].strip()
            datasets = datasets.filter(Q(name__icontains=query) | Q(description__icontains=query))
        if data["kind"]:
            datasets = datasets.filter(kind=data["kind"])
        if data["team"]:
            datasets = datasets.filter(owner_team=data["team"])
        return datasets


class DatasetCreateForm(forms.Form):
    name = forms.CharField(
        max_length=80,
        help_text="Unique within the team: 2-80 lower-case letters, digits, dots, dashes or underscores.",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    owner_team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")
    kind = forms.ChoiceField(
        label="Row shape",
        choices=DatasetKind.choices,
        initial=DatasetKind.CHAT,
        widget=forms.RadioSelect(attrs={"class": "radio"}),
        help_text="Every version of the dataset holds rows of this shape.",
    )
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = gate.allowed(actor, Team, "training.run").order_by("name")
        self.fields["owner_team"].queryset = teams
        if len(teams) == 1:
            self.fields["owner_team"].initial = teams[0].pk

    def clean_name(self):
        return self.cleaned_data["name"].strip().lower()


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        label="JSONL file",
        help_text="One JSON object per line, UTF-8.",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".jsonl,.json,.ndjson,application/jsonl,application/x-ndjson"}
        ),
    )
    base_version = optional_choice(
        ModelVersion,
        field=VersionChoiceField,
        label="Tokenizer of",
        empty_label="None: measure rows in characters",
        help_text="The base model you will fine-tune: rows are measured in its tokens and checked against its "
        "context length.",
    )
    eval_fraction = forms.FloatField(
        label="Evaluation share",
        min_value=0,
        max_value=splitting.MAX_EVAL_FRACTION,
        initial=splitting.DEFAULT_EVAL_FRACTION,
        widget=forms.NumberInput(attrs={"step": "0.01"}),
        help_text="The share of rows held out for evaluation, from 0 to 0.5 (at least one row from 10 rows on).",
    )
    seed = forms.IntegerField(
        label="Split seed",
        initial=splitting.DEFAULT_SEED,
        min_value=0,
        max_value=2**31 - 1,
        help_text="The same rows and seed always give the same split.",
    )

    def __init__(self, *args, actor: Actor, dataset: Dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_version"].queryset = tokenizer_versions(actor)
        if dataset.kind == DatasetKind.CLASSIFICATION:
            self.fields["eval_fraction"].help_text += " Stratified: each label keeps its share."
