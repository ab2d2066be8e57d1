"""Forms of the pools page: a new pool and a node's state. They only parse input: every change goes
through serving.services."""

from __future__ import annotations

from django import forms

from portfolio.accounts.models import Team
from serving.choices import NodeState, PoolKind
from serving.forms.base import NAME_ATTRS, clean_name


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.select_related("department").order_by("name")

    def clean_name(self):
        return clean_name(self.cleaned_data["name"])


class NodeStateForm(forms.Form):
    state = forms.ChoiceField(
        choices=[(s.value, s.label) for s in (NodeState.READY, NodeState.CORDONED, NodeState.DRAINING)]
    )
