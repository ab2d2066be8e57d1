"""Forms of a deployment's page: scale, update its version, add an adapter, try it. They only parse
input: every change goes through serving.services."""

from __future__ import annotations

from django import forms
from django.db.models import Case, Value, When

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.forms.base import NAME_ATTRS, VersionChoiceField, ready_bases
from serving.models import Deployment
from serving.playground import MAX_PROMPT_CHARS


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=0, max_value=64)


class UpdateVersionForm(forms.Form):
    version = VersionChoiceField(
        label="New base version", queryset=ModelVersion.objects.none(), empty_label=None
    )

    def __init__(self, *args, actor: Actor, deployment: Deployment, **kwargs):
        super().__init__(*args, **kwargs)
        # Versions of the same model first: the usual update is to its next version.
        same_model = Case(When(model_id=deployment.version.model_id, then=Value(0)), default=Value(1))
        self.fields["version"].queryset = ready_bases(actor).order_by(same_model, "model__name", "-number")
        self.fields["version"].initial = deployment.version_id


class AdapterAddForm(forms.Form):
    adapter = VersionChoiceField(
        label="Adapter version", queryset=ModelVersion.objects.none(), empty_label="Choose a ready adapter"
    )
    name = forms.CharField(
        label="Served as",
        max_length=63,
        required=False,
        help_text="The model name clients pass; derived from the adapter when left empty.",
        widget=forms.TextInput(NAME_ATTRS),
    )

    def __init__(self, *args, actor: Actor, deployment: Deployment, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["adapter"].queryset = (
            gate.visible(actor, ModelVersion)
            .filter(
                kind=VersionKind.ADAPTER, status=VersionStatus.READY, base_version_id=deployment.version_id
            )
            .exclude(pk__in=deployment.adapters.values("version_id"))
            .select_related("model")
            .order_by("model__name", "-number")
        )

    def clean_name(self):
        return self.cleaned_data["name"].strip().lower()


class TryForm(forms.Form):
    model = forms.ChoiceField(label="Model", help_text="The base model, or one of its adapters.")
    prompt = forms.CharField(
        max_length=MAX_PROMPT_CHARS,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "Ask something…"}),
    )
    max_tokens = forms.IntegerField(label="Max tokens", min_value=1, max_value=512, initial=128)

    def __init__(self, *args, deployment: Deployment, adapter_names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(deployment.name, f"{deployment.name} (base)")]
        choices += [(name, name) for name in adapter_names]
        self.fields["model"].choices = choices
        self.fields["model"].initial = deployment.name
