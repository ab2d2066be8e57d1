"""No cache keeps what a signed-in person was shown. Without it, the browser's back/forward cache hands the
audit log, the user list or a bill back to whoever presses Back at the same browser after its owner signed
out, with no request to the server; and a shared proxy or the disk cache could keep it as well.

A response that says how it may be cached (a static file, an export, a view marked ``never_cache``) is left
as it is: its view knows best.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.cache import add_never_cache_headers


class NoStoreMiddleware:
    """Marks ``Cache-Control: no-store`` (Django's ``never_cache``) on the answers to signed-in requests:
    by a browser session, or by a token of the REST API (``request.auth``, set by ninja during the view).
    Goes right after AuthenticationMiddleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not response.has_header("Cache-Control") and _signed_in(request):
            add_never_cache_headers(response)
        return response


def _signed_in(request) -> bool:
    if getattr(request, "auth", None) is not None:
        return True
    # Only a request carrying a session cookie can have a session user: the others (the health check,
    # scripts with a token) are not made to read a session they lack, which would add ``Vary: Cookie``.
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False
    user = getattr(request, "user", None)
    return user is not None and user.is_authenticated
