"""Forms of the serving pages. They only parse input: every change goes through serving.services."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.db.models import Case, Value, When

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.errors import DomainError
from portfolio.formerrors import show_refusal
from portfolio.registry.choices import VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from serving.choices import NodeState, PoolKind
from serving.engine_args import SPECS, Spec
from serving.models import ComputePool, Deployment, Endpoint
from serving.playground import MAX_PROMPT_CHARS

NAME_HELP = "2-63 lower-case letters, digits and dashes."
NAME_ATTRS = {"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}
# Names that collide with the pages under /pools/, /deployments/ and /endpoints/.
RESERVED_NAMES = frozenset({"new"})
ARG_PREFIX = "arg_"
# A refused engine argument ("engine_args.dtype: ...") goes next to its own field on the form.
ENGINE_ARG_FIELDS = {f"engine_args.{name}": ARG_PREFIX + name for name in SPECS}


def apply_serving_error(form: forms.Form, exc: DomainError, field_map: dict[str, str] | None = None) -> None:
    """``formerrors.show_refusal``, knowing where the engine argument fields are."""
    show_refusal(form, exc, ENGINE_ARG_FIELDS | (field_map or {}))


def _clean_name(value: str) -> str:
    name = value.strip().lower()
    if name in RESERVED_NAMES:
        raise forms.ValidationError("This name is reserved; choose another one.")
    return name


def managed_teams(actor: Actor, action: str = "deployment.manage"):
    """Teams in which the actor may do ``action``: the choices of a form's team field."""
    teams = [team for team in gate.visible(actor, Team).order_by("name") if gate.can(actor, action, team)]
    return Team.objects.filter(pk__in=[t.pk for t in teams]).order_by("name")


def ready_bases(actor: Actor):
    """Versions a deployment may serve: ready base versions the actor can see."""
    return (
        gate.visible(actor, ModelVersion)
        .filter(kind=VersionKind.BASE, status=VersionStatus.READY, artifact__isnull=False)
        .select_related("model")
        .order_by("model__name", "-number")
    )


def human_count(n: int | None) -> str:
    """134515008 -> "134.5M"."""
    if not n:
        return ""
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= factor:
            return f"{n / factor:.1f}{suffix}"
    return str(n)


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        params = human_count(obj.parameter_count)
        return f"{obj.label} · {params} parameters" if params else obj.label


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


# --- Pools and nodes -------------------------------------------------------------------------------
class PoolCreateForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text="2-63 lower-case letters, digits and dashes, e.g. gpu-a100.",
        widget=forms.TextInput(NAME_ATTRS),
    )
    kind = forms.ChoiceField(choices=PoolKind.choices, initial=PoolKind.CPU, widget=forms.RadioSelect)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    teams = forms.ModelMultipleChoiceField(
        label="Allowed teams",
        queryset=Team.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to open the pool to every team.",
    )
    gpu_hour_rate = forms.DecimalField(
        label="Price per GPU-hour",
        max_digits=10,
        decimal_places=4,
        min_value=Decimal("0"),
        initial=Decimal("0"),
        help_text="Charged back to the team for replica and training hours.",
    )
    cpu_core_hour_rate = forms.DecimalField(
        label="Price per CPU core-hour",
        max_digits=10,
        decimal_places=4,
        min_value=Decimal("0"),
        initial=Decimal("0"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.select_related("department").order_by("name")

    def clean_name(self):
        return _clean_name(self.cleaned_data["name"])


class NodeStateForm(forms.Form):
    state = forms.ChoiceField(
        choices=[(s.value, s.label) for s in (NodeState.READY, NodeState.CORDONED, NodeState.DRAINING)]
    )


# --- Deployments -----------------------------------------------------------------------------------
# What people call each engine argument, and how it reaches vLLM (engine_args.build): a command-line flag,
# an environment variable, or only the scheduler's reservation.
ARG_LABELS = {
    "max_model_len": "Context length (tokens)",
    "dtype": "Data type",
    "max_num_seqs": "Concurrent sequences",
    "enable_lora": "Serve LoRA adapters",
    "max_loras": "Adapters loaded at once",
    "max_lora_rank": "Largest adapter rank",
    "enable_prefix_caching": "Prefix caching",
    "enforce_eager": "Eager mode",
    "gpu_memory_utilization": "GPU memory share",
    "tensor_parallel_size": "GPUs per replica",
    "quantization": "Quantization",
    "kv_cache_space_gib": "KV cache (GiB)",
    "cpu_cores": "CPU cores",
}
ARG_PASSED_AS = {"kv_cache_space_gib": "VLLM_CPU_KVCACHE_SPACE", "cpu_cores": "reserved by the scheduler"}


def _flag(name: str) -> str:
    return ARG_PASSED_AS.get(name, "--" + name.replace("_", "-"))


def _arg_field(name: str, spec: Spec) -> forms.Field:
    """A form field for one allow-listed engine argument, prefilled with its default."""
    label = ARG_LABELS.get(name, name.replace("_", " ").capitalize())
    pools = "" if len(spec.pools) > 1 else f" {'/'.join(p.upper() for p in spec.pools)} pools only."
    default = "on" if spec.default is True else "off" if spec.default is False else (spec.default or "none")
    help_text = f"{spec.help + '. ' if spec.help else ''}Default {default}.{pools}"
    common: dict[str, Any] = {
        "label": label,
        "required": False,
        "initial": spec.default,
        "help_text": help_text,
    }
    bounds: dict[str, Any] = {"min_value": spec.minimum, "max_value": spec.maximum}
    if spec.kind is bool:
        return forms.BooleanField(**common)
    if spec.choices:
        return forms.TypedChoiceField(
            choices=[(value, value if value != "" else "none") for value in spec.choices],
            coerce=cast("Callable[[Any], Any]", spec.kind),
            empty_value="" if spec.kind is str else None,
            **common,
        )
    if spec.kind is float:
        return forms.FloatField(widget=forms.NumberInput(attrs={"step": "0.01"}), **bounds, **common)
    return forms.IntegerField(**bounds, **common)


class EngineArgsMixin:
    """Engine arguments as individual fields (``arg_<name>``), built from ``engine_args.SPECS``."""

    if TYPE_CHECKING:  # what the form it is mixed into provides

        def __getitem__(self, name: str) -> forms.BoundField: ...

    def add_engine_fields(self) -> None:
        for name, spec in SPECS.items():
            self.fields[ARG_PREFIX + name] = _arg_field(name, spec)

    def engine_fields(self, pool_kind: str | None) -> list[dict]:
        """What the template needs: the bound field, the pool kinds it applies to, whether it starts hidden."""
        rows = []
        for name, spec in SPECS.items():
            rows.append(
                {
                    "field": self[ARG_PREFIX + name],
                    "name": name,
                    "flag": _flag(name),
                    "pools": " ".join(spec.pools),
                    "hidden": bool(pool_kind) and pool_kind not in spec.pools,
                    "check": spec.kind is bool,
                }
            )
        return rows

    def engine_args(self, pool_kind: str) -> dict:
        """The arguments that differ from their defaults and apply to ``pool_kind``: what is stored."""
        args = {}
        for name, spec in SPECS.items():
            if pool_kind not in spec.pools:
                continue
            value = self.cleaned_data.get(ARG_PREFIX + name)
            if value is None or (value == "" and "" not in spec.choices):
                continue  # left empty (or hidden for this pool kind): the default applies
            if value != spec.default:
                args[name] = value
        return args


class DeploymentForm(EngineArgsMixin, forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text=f"{NAME_HELP} Clients and endpoints refer to the deployment by it.",
        widget=forms.TextInput(NAME_ATTRS),
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")
    version = VersionChoiceField(
        label="Base version",
        queryset=ModelVersion.objects.none(),
        empty_label="Choose a ready base version",
        help_text="Adapters are added on the deployment's page once it exists.",
    )
    pool = forms.ModelChoiceField(
        queryset=ComputePool.objects.none(),
        to_field_name="name",
        empty_label="Choose a pool",
        widget=PoolSelect,
    )
    replicas = forms.IntegerField(min_value=0, max_value=64, initial=1, help_text="0 creates it stopped.")
    store_prompts = forms.BooleanField(
        label="Keep prompt and completion text",
        required=False,
        help_text="Off by default: only metadata (tokens, latency) is recorded for calls.",
    )

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = managed_teams(actor)
        self.fields["team"].queryset = teams
        if len(teams) == 1:
            self.fields["team"].initial = teams[0].pk
        self.fields["version"].queryset = ready_bases(actor)
        pools = gate.visible(actor, ComputePool).order_by("name")
        self.fields["pool"].queryset = pools
        self.fields["pool"].widget.kinds = {pool.name: pool.kind for pool in pools}
        self.add_engine_fields()

    def clean_name(self):
        return _clean_name(self.cleaned_data["name"])

    def pool_kind(self) -> str | None:
        """The chosen (or prefilled) pool's kind, to show only the engine arguments that apply."""
        value = self.data.get("pool") if self.is_bound else self.initial.get("pool")
        kinds = self.fields["pool"].widget.kinds
        if isinstance(value, ComputePool):
            return value.kind
        return kinds.get(str(value)) if value else None


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


# --- Endpoints -------------------------------------------------------------------------------------
class AdapterSelect(forms.Select):
    """Adapters grouped by deployment; each option says its deployment so the page can offer only the
    adapters of the deployment chosen in the same row."""

    def optgroups(self, name, value, attrs=None):
        groups = super().optgroups(name, value, attrs)
        for group_name, options, _index in groups:
            for option in options:
                if group_name:
                    option["attrs"]["data-deployment"] = group_name
        return groups


class RouteForm(forms.Form):
    deployment = forms.ChoiceField(required=False)
    adapter = forms.ChoiceField(required=False, widget=AdapterSelect)
    weight = forms.IntegerField(min_value=0, max_value=10_000, initial=100, required=False)

    def __init__(self, *args, deployments: list[tuple[str, str]], adapters: dict[str, list[str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployment"].choices = [("", "—"), *deployments]
        grouped = [
            (deployment, [(name, name) for name in names]) for deployment, names in adapters.items() if names
        ]
        self.fields["adapter"].choices = [("", "Base model"), *grouped]

    def clean(self):
        cleaned = super().clean() or {}
        if cleaned.get("deployment") and cleaned.get("weight") is None:
            self.add_error("weight", "Give a weight (0-10000).")
        return cleaned


class BaseRouteFormSet(forms.BaseFormSet):
    def clean(self):
        if any(self.errors):
            return
        if not self.routes():
            raise forms.ValidationError("Add at least one route: choose a deployment and give it a weight.")

    def routes(self) -> list[dict]:
        """The rows that name a deployment and are not removed, as ``services`` takes them."""
        routes = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if not data.get("deployment") or data.get("DELETE"):
                continue
            routes.append(
                {
                    "deployment": data["deployment"],
                    "adapter": data.get("adapter") or None,
                    "weight": data["weight"],
                }
            )
        return routes


RouteFormSet = forms.formset_factory(
    RouteForm, formset=BaseRouteFormSet, extra=1, can_delete=True, max_num=32, validate_max=True
)


def route_formset(data=None, *, deployments: list[Deployment], initial: list[dict] | None = None):
    """The route rows of an endpoint; ``deployments`` come with their adapters prefetched."""
    several_teams = len({d.owner_team_id for d in deployments}) > 1
    choices = [(d.name, f"{d.name} ({d.owner_team.name})" if several_teams else d.name) for d in deployments]
    adapters = {d.name: [a.name for a in d.adapters.all()] for d in deployments}
    return RouteFormSet(
        data, initial=initial, prefix="routes", form_kwargs={"deployments": choices, "adapters": adapters}
    )


class FallbackField(forms.ModelChoiceField):
    with_team = False

    def label_from_instance(self, obj: Endpoint) -> str:
        return f"{obj.name} ({obj.owner_team.name})" if self.with_team else obj.name


class MaxNField(forms.IntegerField):
    def __init__(self, **kwargs):
        super().__init__(
            min_value=1,
            max_value=128,
            initial=8,
            required=False,
            label="Completions per prompt, at most",
            help_text="The most completions (n) one request may ask for: each is reserved against "
            "the caller's budget and billed.",
            **kwargs,
        )


class EndpointForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text=f"{NAME_HELP} What clients pass as “model”; it cannot change later.",
        widget=forms.TextInput(NAME_ATTRS),
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    fallback = FallbackField(
        queryset=Endpoint.objects.none(),
        required=False,
        empty_label="No fallback",
        help_text="Called instead when no replica behind this endpoint is ready.",
    )
    max_n = MaxNField()

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = managed_teams(actor)
        self.fields["team"].queryset = teams
        if len(teams) == 1:
            self.fields["team"].initial = teams[0].pk
        # A fallback is an endpoint of the same team (services refuse another team's): only the endpoints of
        # the teams offered above, named with their team when there are several.
        self.fields["fallback"].queryset = (
            gate.visible(actor, Endpoint)
            .filter(owner_team__in=teams)
            .select_related("owner_team")
            .order_by("name")
        )
        self.fields["fallback"].with_team = len(teams) > 1

    def clean_name(self):
        return _clean_name(self.cleaned_data["name"])


class FallbackForm(forms.Form):
    fallback = FallbackField(
        queryset=Endpoint.objects.none(),
        required=False,
        empty_label="No fallback",
        help_text="Called instead when no replica behind this endpoint is ready.",
    )
    max_n = MaxNField()

    def __init__(self, *args, actor: Actor, endpoint: Endpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["fallback"].queryset = (
            gate.visible(actor, Endpoint)
            .filter(owner_team_id=endpoint.owner_team_id)
            .exclude(pk=endpoint.pk)
            .order_by("name")
        )
        self.fields["fallback"].initial = endpoint.fallback_id
        self.fields["max_n"].initial = endpoint.max_n
