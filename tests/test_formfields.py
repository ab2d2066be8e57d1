"""The shared form fields (portfolio/formfields.py)."""

from __future__ import annotations

import pytest
from django import forms

from portfolio.accounts.models import Team
from portfolio.formfields import optional_choice

pytestmark = pytest.mark.django_db


class TeamForm(forms.Form):
    team = optional_choice(Team, label="Team", empty_label="No team")


def test_an_optional_choice_offers_no_row_until_the_form_sets_its_rows(org):
    team = Team.objects.order_by("pk").first()
    assert team is not None
    unset = TeamForm(data={"team": team.pk})
    assert list(unset.fields["team"].queryset) == []
    assert not unset.is_valid() and "team" in unset.errors

    form = TeamForm(data={"team": team.pk})
    form.fields["team"].queryset = Team.objects.filter(pk=team.pk)
    assert form.is_valid() and form.cleaned_data["team"] == team


def test_an_optional_choice_may_be_left_empty():
    form = TeamForm(data={"team": ""})
    assert form.is_valid() and form.cleaned_data["team"] is None
    assert form.fields["team"].empty_label == "No team"
