"""Sign-in for the web UI. Machine-facing paths are let through: they authenticate each request themselves
(the REST API and the gateway answer 401 JSON) or must be reachable without a session."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect

OPEN_PREFIXES = ("/api/", "/v1/", "/static/", "/healthz", "/metrics")


class LoginRequiredMiddleware(auth_middleware.LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, minus the paths in ``OPEN_PREFIXES``."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith(OPEN_PREFIXES):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)

    def handle_no_permission(self, request, view_func):
        if request.headers.get("HX-Request") == "true":
            # An htmx call from a page whose session expired: send the whole page to the login form
            # instead of swapping the login form into a fragment.
            login_url = resolve_url(self.get_login_url(view_func))
            current = urlsplit(request.headers.get("HX-Current-URL", ""))
            next_path = urlunsplit(("", "", current.path, current.query, "")) or request.get_full_path()
            redirect = redirect_to_login(next_path, login_url, self.get_redirect_field_name(view_func))
            return HttpResponseClientRedirect(redirect.url)
        return super().handle_no_permission(request, view_func)
