"""A service's refusal shown on the form that asked for the change.

Services raise ``DomainError`` with a message for people and, where they can, the fields at fault
(``fields``); some name their field only in the message (``"replicas: between 0 and 64."``). Either way
the message goes next to that field, else above the form. A refusal of access is not a form problem:
``NotFound`` and ``Forbidden`` propagate to Django's 404 and 403 pages.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import Http404

from portfolio.errors import DomainError


def show_refusal(form: forms.Form, exc: DomainError, field_map: dict[str, str] | None = None) -> None:
    """Add ``exc`` to ``form``; ``field_map`` renames a service's field to the form's (``path`` -> ``ref``)."""
    if isinstance(exc, Http404 | PermissionDenied):
        raise exc
    field_map = field_map or {}
    if not exc.fields:
        name, sep, rest = exc.message.partition(": ")
        target = field_map.get(name, name) if sep else None
        if target in form.fields:
            form.add_error(target, rest)
            return
    placed = False
    for name, messages in exc.fields.items():
        target = field_map.get(name, name)
        if target not in form.fields:
            continue
        # Services phrase the first problem as "field: what to do", more helpful than the bare messages.
        prefix = f"{name}: "
        form.add_error(
            target, exc.message.removeprefix(prefix) if exc.message.startswith(prefix) else messages
        )
        placed = True
    if not placed:
        form.add_error(None, exc.message)
