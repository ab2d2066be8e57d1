"""Form fields every app's forms share (the web kit's, like formviews.py and listing.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db import models


def optional_choice(
    model: type[models.Model],
    *,
    empty_label: str,
    field: type[forms.ModelChoiceField] = forms.ModelChoiceField,
    **options: Any,
) -> forms.ModelChoiceField:
    """A choice of one row of ``model`` or none (``empty_label``). It offers nothing until the form's
    ``__init__`` sets its queryset to what the actor may choose: a form that forgets to offers no row, never
    every row."""
    return field(queryset=model._default_manager.none(), required=False, empty_label=empty_label, **options)
