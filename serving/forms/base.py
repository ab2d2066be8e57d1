"""What the serving forms share: names, the team, version and pool choices, and where a refused engine
argument goes on a form."""

from __future__ import annotations

from django import forms

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.errors import DomainError
from portfolio.formerrors import show_refusal
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from portfolio.templatetags.formatting import human_count
from serving.engine_args import SPECS
from serving.services.shared import RESERVED_NAMES

NAME_HELP = "2-63 lower-case letters, digits and dashes."
NAME_ATTRS = {"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
ARG_PREFIX = "arg_"
# A refused engine argument ("engine_args.dtype: ...") goes next to its own field on the form.
ENGINE_ARG_FIELDS = {f"engine_args.{name}": ARG_PREFIX + name for name in SPECS}


def apply_serving_error(form: forms.Form, exc: DomainError, field_map: dict[str, str] | None = None) -> None:
    """``formerrors.show_refusal``, knowing where the engine argument fields are."""
    show_refusal(form, exc, ENGINE_ARG_FIELDS | (field_map or {}))


def clean_name(value: str) -> str:
    name = value.strip().lower()
    if name in RESERVED_NAMES:
        raise forms.ValidationError("This name is reserved; choose another one.")
    return name


def managed_teams(actor: Actor, action: str = "deployment.manage"):
    """Teams in which the actor may do ``action``: the choices of a form's team field."""
    return gate.allowed(actor, Team, action).order_by("name")


def ready_bases(actor: Actor):
    """Versions a deployment may serve: ready base versions the actor can see."""
    return (
        gate.visible(actor, ModelVersion)
        .filter(kind=VersionKind.BASE, status=VersionStatus.READY, artifact__isnull=False)
        .select_related("model")
        .order_by("model__name", "-number")
    )


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        if not obj.parameter_count:
            return obj.label
        return f"{obj.label} · {human_count(obj.parameter_count)} parameters"


class PoolSelect(forms.Select):
    """A pool select whose options carry the pool's kind, so the page shows the engine arguments that apply."""

    def __init__(self, *args, kinds: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds = kinds or {}

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        kind = self.kinds.get(str(value))
        if kind:
            option["attrs"]["data-kind"] = kind
        return option
