"""Answering htmx: one view renders a whole page, or only the part of it an htmx call swaps.

Either answer carries ``Vary: HX-Request``, so that a cache never hands the fragment to a browser that
asked for the page, nor the page to an htmx swap.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render as django_render
from django.utils.cache import patch_vary_headers

from portfolio.accounts.context import wants_fragment


def render(request, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    """Django's ``render`` for a view whose answer depends on ``HX-Request``."""
    response = django_render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def page_or_fragment(request, page: str, fragment: str, context: dict, *, status: int = 200) -> HttpResponse:
    """The whole ``page``, or only ``fragment`` for an htmx call (a history restore gets the page)."""
    return render(request, fragment if wants_fragment(request) else page, context, status=status)
