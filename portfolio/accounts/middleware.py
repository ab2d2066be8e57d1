"""Sign-in for the web UI. Machine-facing paths are let through: they authenticate each request themselves
(the REST API and the gateway answer 401 JSON) or must be reachable without a session. And a single sign-on
session's record follows its session to a new key (``SsoSessionKeyMiddleware``)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from csp.middleware import CSPMiddleware
from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect

from portfolio.accounts.sso import config as sso_config
from portfolio.accounts.sso import logout as sso_logout

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
            try:
                current = urlsplit(request.headers.get("HX-Current-URL", ""))
                next_path = urlunsplit(("", "", current.path, current.query, ""))
            except ValueError:  # a header no browser sends ("http://[" is no URL): this request's own path
                next_path = ""
            next_path = next_path or request.get_full_path()
            redirect = redirect_to_login(next_path, login_url, self.get_redirect_field_name(view_func))
            return HttpResponseClientRedirect(redirect.url)
        return super().handle_no_permission(request, view_func)


class SsoSessionKeyMiddleware:
    """After the view, moves a single sign-on session's record to the session's new key when Django changed
    it during the request (``sso.logout.follow``): ``request.user`` is read lazily, so the change made by
    ``auth.get_user`` after a secret rotation may come as late as the view. Goes after
    AuthenticationMiddleware and inside SessionMiddleware, which then saves the session."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        session = getattr(request, "session", None)
        if session is not None:
            sso_logout.follow(session)
        return response


class RealmFormActionCSPMiddleware(CSPMiddleware):
    """django-csp's, letting a form lead to the realm when single sign-on is on: signing out of a sign-on
    session redirects the sign-out form's POST to the realm's logout page, and browsers hold a form's
    redirects to ``form-action`` too (``'self'`` alone would leave the person on the page, not signed out)."""

    def get_policy_parts(self, request, response, report_only=False):
        parts = super().get_policy_parts(request, response, report_only)
        config = sso_config.current()
        if config is not None and not report_only:
            realm = urlsplit(config.server_url)
            update = dict(parts.update or {})
            update["form-action"] = [*update.get("form-action", []), f"{realm.scheme}://{realm.netloc}"]
            parts.update = update
        return parts
