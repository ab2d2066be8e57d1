"""Forms of the model registry pages. They only parse input: every change goes through registry.services."""

from __future__ import annotations

from django import forms
from django.db.models import Q

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.formfields import optional_choice
from portfolio.registry.chat_templates import MAX_CHAT_TEMPLATE_BYTES
from portfolio.registry.choices import Source, Task, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Alias, Model, ModelVersion

# Aliases most teams use; any other name matching the alias rule is accepted too.
SUGGESTED_ALIASES = ("production", "staging", "canary")
IMPORT_SOURCES = [
    (Source.HUB.value, "Hugging Face Hub"),
    (Source.LOCAL.value, "Server folder"),
    (Source.GGUF.value, "GGUF file"),
]


def parse_tags(raw: str) -> list[str]:
    return [tag.strip() for tag in raw.split(",") if tag.strip()]


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        return obj.label


# --- The catalogue ---------------------------------------------------------------------------------
class ModelFilterForm(forms.Form):
    """The list's search and filters; every choice offered comes from models the actor may see."""

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=100,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Name, description or tag", "autocomplete": "off"}
        ),
    )
    task = forms.ChoiceField(label="Task", required=False, choices=[("", "Any task"), *Task.choices])
    team = forms.ModelChoiceField(
        label="Owner team",
        queryset=Team.objects.none(),
        required=False,
        to_field_name="slug",
        empty_label="Any team",
    )
    alias = forms.ChoiceField(label="Alias", required=False)

    def __init__(self, *args, visible_models, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = (
            Team.objects.filter(models__in=visible_models).distinct().order_by("name")
        )
        names = Alias.objects.filter(model__in=visible_models).values_list("name", flat=True).distinct()
        self.fields["alias"].choices = [("", "Any alias"), *((name, name) for name in sorted(names))]

    def apply(self, models):
        data = self.cleaned_data
        if data["q"]:
            query = data["q"].strip()
            models = models.filter(
                Q(name__icontains=query) | Q(description__icontains=query) | Q(tags__contains=[query.lower()])
            )
        if data["task"]:
            models = models.filter(task=data["task"])
        if data["team"]:
            models = models.filter(owner_team=data["team"])
        if data["alias"]:
            models = models.filter(aliases__name=data["alias"])
        return models


class ModelEditForm(forms.Form):
    task = forms.ChoiceField(choices=Task.choices, initial=Task.CHAT)
    visibility = forms.ChoiceField(
        choices=Visibility.choices,
        initial=Visibility.TEAM,
        help_text="Who may see the model and its versions: only the owner team, its department, or everyone.",
    )
    tags = forms.CharField(
        required=False,
        max_length=400,
        help_text="Comma-separated, e.g. “support, routing”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    license = forms.CharField(required=False, max_length=100, help_text="e.g. Apache-2.0")
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 4}))

    def clean_tags(self):
        tags = parse_tags(self.cleaned_data["tags"])
        too_long = [tag for tag in tags if len(tag) > 40]
        if too_long:
            raise forms.ValidationError(f"Tags are at most 40 characters: {too_long[0][:50]}…")
        return tags


class ModelCreateForm(ModelEditForm):
    name = forms.CharField(
        max_length=80,
        help_text="What clients and scripts call it: 2-80 lower-case letters, digits, dots, dashes or underscores.",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    owner_team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")

    field_order = ["name", "owner_team", "task", "visibility", "tags", "license", "description"]

    # Names that collide with the pages under /models/.
    RESERVED_NAMES = frozenset({"new"})

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = gate.allowed(actor, Team, "model.register").order_by("name")
        self.fields["owner_team"].queryset = teams
        if len(teams) == 1:
            self.fields["owner_team"].initial = teams[0].pk

    def clean_name(self):
        name = self.cleaned_data["name"].strip().lower()
        if name in self.RESERVED_NAMES:
            raise forms.ValidationError("This name is reserved; choose another one.")
        return name


# --- Versions --------------------------------------------------------------------------------------
def ready_bases(actor: Actor):
    """Versions an adapter may be built on: ready base versions the actor can see."""
    return (
        gate.visible(actor, ModelVersion)
        .filter(kind=VersionKind.BASE, status=VersionStatus.READY)
        .select_related("model")
        .order_by("model__name", "-number")
    )


class ImportForm(forms.Form):
    source = forms.ChoiceField(
        choices=IMPORT_SOURCES, initial=Source.HUB.value, widget=forms.RadioSelect(attrs={"class": "radio"})
    )
    ref = forms.CharField(
        label="Reference",
        max_length=500,
        help_text=(
            "Hub: org/name@revision (pin a commit or tag). Server folder or GGUF file: an absolute path under "
            "one of the import folders."
        ),
        widget=forms.TextInput(
            attrs={
                "autocomplete": "off",
                "spellcheck": "false",
                "placeholder": "HuggingFaceTB/SmolLM2-135M@main",
            }
        ),
    )
    base_version = optional_choice(
        ModelVersion,
        field=VersionChoiceField,
        label="Base version",
        empty_label="None: these are base weights",
        help_text="Only for a LoRA adapter: the ready base version it was trained on.",
    )
    allow_pickle = forms.BooleanField(
        label="Allow pickle weights (.bin, .pt)",
        required=False,
        help_text="Pickle files can run code when loaded. Only for sources you trust.",
    )
    trust_remote_code = forms.BooleanField(
        label="Trust remote code",
        required=False,
        help_text="Lets the model's own Python code run in the engines. Only for sources you trust.",
    )
    chat_template = forms.CharField(
        label="Chat template (optional)",
        required=False,
        strip=False,
        max_length=MAX_CHAT_TEMPLATE_BYTES,
        help_text=(
            "A Jinja chat template for files that have none (many GGUF files and base models): chat calls to a "
            "version without one are refused. Written into the imported tokenizer; base versions only."
        ),
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
    )

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_version"].queryset = ready_bases(actor)
        if not actor.is_admin:
            # Only a platform admin may lift these safety checks; the fields do not exist for others.
            del self.fields["allow_pickle"]
            del self.fields["trust_remote_code"]


class AdapterUploadForm(forms.Form):
    file = forms.FileField(
        label="Adapter archive (.zip)",
        help_text="A .zip with adapter_config.json and the adapter weights as safetensors.",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
    )
    base_version = VersionChoiceField(
        label="Base version",
        queryset=ModelVersion.objects.none(),
        empty_label="Choose the base it was trained on",
    )

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_version"].queryset = ready_bases(actor)

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if not upload.name.lower().endswith(".zip"):
            raise forms.ValidationError("Upload the adapter as a .zip archive.")
        return upload


class PromoteForm(forms.Form):
    alias = forms.CharField(
        max_length=32,
        help_text="e.g. production, staging or canary. Clients resolving the alias get this version.",
        widget=forms.TextInput(
            attrs={
                "list": "alias-suggestions",
                "autocomplete": "off",
                "autocapitalize": "none",
                "spellcheck": "false",
            }
        ),
    )
    confirm = forms.BooleanField(required=False, widget=forms.HiddenInput)
    force_reason = forms.CharField(
        required=False,
        max_length=500,
        label="Reason to override the eval scores (owners only)",
        help_text="Promotion to production is refused when this version scores below the current holder, or "
        "has no score on an eval set the holder was scored on.",
    )
    endpoint = forms.CharField(
        required=False,
        max_length=63,
        label="Roll out on endpoint (optional)",
        help_text="Start a canary of this version on this endpoint. Left empty, production starts one on "
        "every endpoint that served the previous production version.",
    )

    def clean_alias(self):
        return self.cleaned_data["alias"].strip().lower()


class ChatTemplateForm(forms.Form):
    chat_template = forms.CharField(
        label="Chat template",
        strip=False,
        max_length=MAX_CHAT_TEMPLATE_BYTES,
        help_text=(
            "Jinja, as transformers reads it (e.g. the template of the model's instruction-tuned sibling). "
            "Creates a new version with the same weights and this template; this version stays as it is."
        ),
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
    )


class CompareForm(forms.Form):
    a = forms.TypedChoiceField(label="Version A", coerce=int)
    b = forms.TypedChoiceField(label="Version B", coerce=int)

    def __init__(self, *args, model: Model, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [
            (v.number, f"v{v.number} · {v.get_kind_display()} · {v.status}")
            for v in model.versions.order_by("-number")
        ]
        self.fields["a"].choices = choices
        self.fields["b"].choices = choices
