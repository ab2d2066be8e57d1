"""The new deployment form, with its engine argument fields. It only parses input: every change goes
through serving.services."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django import forms

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.registry.models import ModelVersion
from serving.engine_args import SPECS, Spec
from serving.forms.base import (
    ARG_PREFIX,
    NAME_ATTRS,
    NAME_HELP,
    PoolSelect,
    VersionChoiceField,
    clean_name,
    managed_teams,
    ready_bases,
)
from serving.models import ComputePool

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
    "enable_expert_parallel": "Expert parallelism",
    "images_per_prompt": "Images a prompt",
}
ARG_PASSED_AS = {"kv_cache_space_gib": "VLLM_CPU_KVCACHE_SPACE", "cpu_cores": "reserved by the scheduler"}


def _flag(name: str) -> str:
    return ARG_PASSED_AS.get(name, "--" + name.replace("_", "-"))


def _arg_field(name: str, spec: Spec) -> forms.Field:
    """A form field for one allow-listed engine argument, prefilled with its default."""
    label = ARG_LABELS.get(name, name.replace("_", " ").capitalize())
    pools = "" if len(spec.pools) > 1 else f" {'/'.join(p.upper() for p in spec.pools)} pools only."
    default = "on" if spec.default is True else "off" if spec.default is False else (spec.default or "none")
    families = f" {' / '.join(spec.families)} models only." if spec.families else ""
    help_text = f"{spec.help + '. ' if spec.help else ''}Default {default}.{pools}{families}"
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
    # A refusal that is no field's fault (no room for the replicas), said above the form.
    refusal = ""

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
        return clean_name(self.cleaned_data["name"])

    def pool_kind(self) -> str | None:
        """The chosen (or prefilled) pool's kind, to show only the engine arguments that apply."""
        value = self.data.get("pool") if self.is_bound else self.initial.get("pool")
        kinds = self.fields["pool"].widget.kinds
        if isinstance(value, ComputePool):
            return value.kind
        return kinds.get(str(value)) if value else None
