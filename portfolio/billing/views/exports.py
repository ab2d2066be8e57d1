"""Downloading a statement (or the month's draft) as CSV, PDF or a signed bundle from the billing pages."""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseBadRequest
from django.views.decorators.http import require_POST

from portfolio.accounts.context import actor_of
from portfolio.billing import exports
from portfolio.errors import Invalid


def attachment(export: exports.Export) -> HttpResponse:
    response = HttpResponse(export.data, content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response["Cache-Control"] = "private, no-store"  # a bill, and a draft changes from one minute to the next
    return response


@require_POST
def statement_export(request, department_id: int, month: str, fmt: str):
    """Permission: ``billing.view`` through ``billing.access`` (404 for a department the user reads nothing
    of; a team owner's file holds only their teams' lines, marked partial). A ``revision=N`` field for a
    superseded revision; without it the revision in force, or the draft of an open month.

    POST with the CSRF token, never GET: each export is audited in the caller's name, and a top-level
    cross-site navigation carries the (SameSite=Lax) session cookie, so a GET could be run by any site."""
    revision_text = request.POST.get("revision", "")
    try:
        revision = int(revision_text) if revision_text else None
        if revision_text and len(revision_text) > 6:
            raise ValueError
    except ValueError:
        return HttpResponseBadRequest("revision: a whole number from 1.", content_type="text/plain")
    try:
        export = exports.export(
            actor=actor_of(request), department_id=department_id, month=month, fmt=fmt, revision=revision
        )
    except Invalid as exc:
        return HttpResponseBadRequest(exc.message, content_type="text/plain")
    return attachment(export)
