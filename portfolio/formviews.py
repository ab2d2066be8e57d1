"""Forms that change something: a valid form runs one service call; the page that comes next says how it
went, or the form comes back with the service's refusal next to the field at fault.

The form-page counterpart of ``buttons.press``. Refusals of access (``NotFound``, ``Forbidden``)
propagate to Django's 404 and 403 pages (``formerrors.show_refusal``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django import forms
from django.contrib import messages
from django.db import models
from django.http import HttpResponse

from portfolio.errors import DomainError
from portfolio.formerrors import show_refusal

T = TypeVar("T")
F = TypeVar("F", bound=forms.Form)


def submit(
    request,
    form: F,
    call: Callable[[], T],
    *,
    then: Callable[[T], HttpResponse],
    success: str | Callable[[T], str] | None = None,
    fields: dict[str, str] | None = None,
    refused: Callable[[F, DomainError], None] | None = None,
    reload: models.Model | None = None,
) -> HttpResponse | None:
    """If ``form`` is valid, run ``call``: on success say ``success`` (or ``success(result)``) and answer
    ``then(result)``; on a refusal put it on the form and answer None, as for a form that did not
    validate, so that the view shows the form again.

    ``fields`` renames a service's field to the form's (``show_refusal``); ``refused(form, exc)`` places a
    refusal instead; ``reload`` is an object the service may have changed in memory before refusing,
    read again so that the page shows what is stored."""
    if not form.is_valid():
        return None
    try:
        result = call()
    except DomainError as exc:
        if refused is None:
            show_refusal(form, exc, fields)
        else:
            refused(form, exc)
        if reload is not None:
            reload.refresh_from_db()
        return None
    if success is not None:
        messages.success(request, success(result) if callable(success) else success)
    return then(result)
