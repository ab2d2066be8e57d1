"""Forms of the fine-tuning pages: the job list's filters and the start form, with the hyperparameters
and the fields the distillation form shares. They only parse input: jobs start in training.finetune."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.errors import Invalid
from portfolio.registry.models import Model, ModelVersion
from serving.forms.base import PoolSelect, ready_bases
from serving.forms.base import VersionChoiceField as ServingVersionChoiceField
from serving.models import ComputePool
from training import architectures
from training.choices import DatasetVersionStatus, JobStatus, Method
from training.defaults import Hyperparameters
from training.lora_targets import CHOICE_LABELS, MAX_NAME_LENGTH, MAX_TARGETS
from training.models import DatasetVersion


class JobFilterForm(forms.Form):
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *JobStatus.choices]
    )

    def apply(self, jobs):
        if self.cleaned_data["status"]:
            jobs = jobs.filter(status=self.cleaned_data["status"])
        return jobs


def trainable_dataset_versions(actor: Actor):
    """Ready dataset versions in the teams where the actor may train (owner or engineer)."""
    return (
        gate.allowed(actor, DatasetVersion, "training.run")
        .filter(status=DatasetVersionStatus.READY)
        .select_related("dataset__owner_team")
        .order_by("dataset__owner_team__slug", "dataset__name", "-number")
    )


def registrable_models(actor: Actor):
    """Models the actor may register new versions under: where a fine-tune's result can go."""
    return gate.allowed(actor, Model, "model.register").order_by("name")


class DatasetVersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: DatasetVersion) -> str:
        return (
            f"{obj.dataset.owner_team.slug}/{obj.dataset.name} v{obj.number} · "
            f"{obj.train_count:,} train / {obj.eval_count:,} eval rows"
        )


class PoolChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ComputePool) -> str:
        return f"{obj.name} · {obj.kind.upper()}"


METHOD_HELP = {
    Method.LORA: "Trains small low-rank matrices on top of the frozen base: fast, runs on CPU pools, and the "
    "result is an adapter served on its base's replicas.",
    Method.FULL: "Updates every weight: a new base version, and much more memory and time.",
    Method.QLORA: "LoRA over the base loaded in 4 bits (NF4): about a quarter of its memory, so bigger bases fit "
    "one GPU. Its kernels are CUDA-only: GPU pools only, whose nodes have the gpu extra installed.",
}
DEFAULTS = Hyperparameters()
# Hyperparameter fields, in the order the form shows them; their limits are those the service enforces.
HYPERPARAMETER_FIELDS = (
    "epochs",
    "learning_rate",
    "batch_size",
    "max_length",
    "lora_r",
    "lora_alpha",
    "seed",
    "checkpoint_every",
    "early_stopping_patience",
    "lora_targets",
    "target_modules",
)
LORA_ONLY = frozenset({"lora_r", "lora_alpha", "lora_targets", "target_modules"})


def _number(placeholder, **attrs) -> forms.NumberInput:
    return forms.NumberInput(attrs={"placeholder": placeholder, "inputmode": "decimal", **attrs})


class HyperparametersForm(forms.Form):
    """The hyperparameters a start form offers, with the limits the service enforces; blank ones are
    left to the automatic defaults (training.defaults.Hyperparameters.resolved)."""

    epochs = forms.IntegerField(
        min_value=0,
        max_value=50,
        required=False,
        widget=_number("auto"),
        help_text="Blank: chosen from the dataset size, about 180 passes over rows in all (2 to 10 epochs; "
        "one from 100,000 rows); training stops sooner once the eval loss stops falling.",
    )
    learning_rate = forms.FloatField(
        label="Learning rate",
        min_value=0,
        max_value=1,
        required=False,
        widget=_number("auto", step="any"),
        help_text="Blank: for LoRA and QLoRA 0.002 under 1,000 rows, 0.001 under 10,000, then 0.0005, halved "
        "for bases of 3B parameters or more; 0.00002 for full fine-tuning.",
    )
    batch_size = forms.IntegerField(
        label="Batch size",
        min_value=1,
        max_value=256,
        required=False,
        widget=_number(DEFAULTS.batch_size),
        help_text=f"Rows per step. Blank: {DEFAULTS.batch_size}.",
    )
    max_length = forms.IntegerField(
        label="Max length",
        min_value=16,
        max_value=131072,
        required=False,
        widget=_number(DEFAULTS.max_length),
        help_text=f"Tokens per row; longer rows are cut. Blank: {DEFAULTS.max_length}.",
    )
    lora_r = forms.IntegerField(
        label="LoRA rank (r)",
        min_value=1,
        max_value=256,
        required=False,
        widget=_number("auto"),
        help_text="Blank: 8 under 1,000 rows, else 16. The layers adapted: see LoRA layers below.",
    )
    lora_alpha = forms.IntegerField(
        label="LoRA alpha",
        min_value=1,
        max_value=1024,
        required=False,
        widget=_number("auto"),
        help_text="Scales the update (alpha / r). Blank: twice the rank.",
    )
    seed = forms.IntegerField(
        min_value=0,
        max_value=2**31,
        required=False,
        widget=_number(DEFAULTS.seed),
        help_text=f"Row order and initial weights; the same seed repeats a run. Blank: {DEFAULTS.seed}.",
    )
    checkpoint_every = forms.IntegerField(
        label="Checkpoint every",
        min_value=0,
        max_value=100000,
        required=False,
        widget=_number(DEFAULTS.checkpoint_every),
        help_text=f"Steps between checkpoints a resumed job restarts from: 0 (none) or at least 10. "
        f"Blank: {DEFAULTS.checkpoint_every}.",
    )

    early_stopping_patience = forms.IntegerField(
        label="Early stopping patience",
        min_value=0,
        max_value=100,
        required=False,
        widget=_number(DEFAULTS.early_stopping_patience),
        help_text="The loss on an eighth of the training rows, held back from training (never the rows the "
        "job is scored on), is measured twice an epoch; training stops after this many measurements without a "
        "new best and keeps the adapter of the best one. 0: never stops early, and every row trains. "
        f"Blank: {DEFAULTS.early_stopping_patience}.",
    )

    lora_targets = forms.ChoiceField(
        label="LoRA layers",
        required=False,
        choices=[("", "Chosen from the base's family"), *CHOICE_LABELS.items()],
        help_text="Which layers get adapters. Blank: a dense base its attention (and MLP on small bases or "
        "from 1,000 rows); a mixture of experts its attention; a state-space model its Mamba projections; a "
        "hybrid both; a vision-language model its language model only. Adapting experts turns LoRA "
        "dropout off (peft adapts their fused weights only without it).",
    )
    target_modules = forms.CharField(
        label="Target modules",
        required=False,
        max_length=MAX_TARGETS * (MAX_NAME_LENGTH + 2),
        widget=forms.TextInput(attrs={"placeholder": "auto", "spellcheck": "false"}),
        help_text="Layer names, separated by commas (q_proj, v_proj, experts.gate_up_proj): overrides the "
        "choice above. A name the base does not have is refused before the job is queued.",
    )

    def clean_target_modules(self) -> list[str]:
        text = self.cleaned_data.get("target_modules") or ""
        names = [name for name in text.replace(",", " ").split() if name]
        try:
            return architectures.check_names(names)
        except Invalid as exc:
            raise forms.ValidationError(exc.message.partition(": ")[2]) from None

    def hyperparameter_fields(self) -> list[dict]:
        return [
            {"field": self[name], "methods": "lora qlora" if name in LORA_ONLY else ""}
            for name in HYPERPARAMETER_FIELDS
        ]

    def hyperparameters(self) -> dict:
        """The values given; blank ones are left to the automatic defaults."""
        return {
            name: self.cleaned_data[name]
            for name in HYPERPARAMETER_FIELDS
            if self.cleaned_data.get(name) not in (None, "", [])
        }

    def hyperparameters_open(self) -> bool:
        """Whether the hyperparameters section starts open: when one was given or refused."""
        return any(
            self[name].errors or (self.is_bound and self.data.get(name)) for name in HYPERPARAMETER_FIELDS
        )


def check_target(form: forms.Form, base: ModelVersion | None, target: Model | None) -> None:
    """Without a target model, the result goes under the base's model: the actor must be allowed to."""
    if base is not None and target is None and not gate.can(form.actor, "model.register", base.model):
        form.add_error(
            "target_model" if "target_model" in form.fields else None,
            f"You may not register versions of {base.model.name}: choose a model of your team.",
        )


class TrainingStartForm(HyperparametersForm):
    """What the fine-tune and distillation start forms share: the pool the job runs on, the model its result
    is registered under, and the fields preselected when they offer a single choice."""

    pool = PoolChoiceField(
        queryset=ComputePool.objects.none(),
        to_field_name="name",
        empty_label="Choose a pool",
        widget=PoolSelect,
        help_text="The job runs on one ready node of the pool, the least busy one; on a GPU pool it holds one "
        "free GPU of that node (none used by a replica or another job) until it ends.",
    )
    target_model = forms.ModelChoiceField(
        label="Register the result under",
        queryset=Model.objects.none(),
        required=False,
    )
    # Set by each form: the fields preselected when they offer one choice, and what the target means.
    preselected: tuple[str, ...] = ("pool",)
    target_empty_label = ""
    target_help = ""

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.actor = actor
        pools = gate.visible(actor, ComputePool).order_by("name")
        self.fields["pool"].queryset = pools
        self.fields["pool"].widget.kinds = {pool.name: pool.kind for pool in pools}
        target = self.fields["target_model"]
        target.queryset = registrable_models(actor)
        target.empty_label, target.help_text = self.target_empty_label, self.target_help
        for name, queryset in self.querysets(actor).items():
            self.fields[name].queryset = queryset
        for name in self.preselected:
            field = self.fields[name]
            options = list(field.queryset[:2])
            if len(options) == 1 and not self.initial.get(name):
                self.initial[name] = field.prepare_value(options[0])  # its pk, or its to_field_name

    def querysets(self, actor: Actor) -> dict[str, QuerySet]:
        """The querysets of the form's own choice fields."""
        return {}


class JobStartForm(TrainingStartForm):
    base_version = ServingVersionChoiceField(
        label="Base version",
        queryset=ModelVersion.objects.none(),
        empty_label="Choose a ready base version",
        help_text="The model to fine-tune; its tokenizer and chat template shape the rows.",
    )
    dataset_version = DatasetVersionChoiceField(
        label="Dataset version",
        queryset=DatasetVersion.objects.none(),
        empty_label="Choose a dataset version",
        help_text="Trained on its train rows; its eval rows score the base and the result side by side.",
    )
    method = forms.ChoiceField(
        choices=Method.choices,
        initial=Method.LORA,
        widget=forms.RadioSelect(attrs={"class": "radio"}),
    )
    preselected = ("base_version", "pool")
    target_empty_label = "The base version's model"
    target_help = "A model you may register versions of; the new version records its base and dataset."

    def querysets(self, actor: Actor) -> dict[str, QuerySet]:
        return {"base_version": ready_bases(actor), "dataset_version": trainable_dataset_versions(actor)}

    def method_choices(self) -> list[dict]:
        """The method radios with their explanations, for the choice cards."""
        return [{"radio": radio, "help": METHOD_HELP[radio.data["value"]]} for radio in self["method"]]

    def clean(self):
        data = super().clean()
        check_target(self, data.get("base_version"), data.get("target_model"))
        return data
