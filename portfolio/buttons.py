"""Buttons that change something: a POST runs one service call, and the browser goes back to a page
with a message saying how it went.

A refusal a person can act on (``Invalid``, ``Conflict``) is that message; refusals of access
(``NotFound``, ``Forbidden``) propagate to Django's 404 and 403 pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.shortcuts import redirect

from portfolio.errors import Conflict, Invalid

T = TypeVar("T")


def press(
    request,
    call: Callable[[], T],
    *,
    success: str | Callable[[T], str],
    back: str,
    then: str | None = None,
) -> HttpResponseRedirect:
    """Run ``call``; on success say ``success`` (or ``success(result)``) and go to ``then`` (default
    ``back``); on a refusal say why and go ``back``. A target is a URL, or the name of one that takes
    no arguments."""
    try:
        result = call()
    except (Invalid, Conflict) as exc:
        return refuse(request, exc.message, back)
    messages.success(request, success(result) if callable(success) else success)
    return redirect(back if then is None else then)


def refuse(request, message: str, back: str) -> HttpResponseRedirect:
    """Go ``back`` saying why nothing was done (a form of one or two fields that did not parse, say)."""
    messages.error(request, message)
    return redirect(back)
