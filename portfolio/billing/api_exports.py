"""REST endpoints for a statement's exports: CSV, PDF, or the signed bundle of both."""

from __future__ import annotations

from typing import Literal

from django.http import HttpResponse
from ninja import Field, Query, Router, Schema

from portfolio.billing import exports

router = Router(tags=["billing"])


class ExportQuery(Schema):
    format: Literal["csv", "pdf", "zip"] = Field("csv", description="csv, pdf, or zip: both, signed")
    revision: int | None = Field(
        None, ge=1, le=32767, description="A closed revision (default: the one in force, else the draft)"
    )


# POST, not GET: each export is audited in the caller's name, and a browser session on a GET is not
# CSRF-checked (a cross-site link would run it); on POST the session must send the token (portfolio.api).
@router.post("/departments/{department_id}/statements/{month}/export", response={200: None})
def export_statement(request, department_id: int, month: str, query: Query[ExportQuery]):
    """A department's statement for ``month`` (YYYY-MM) as a file: the revision in force, the given
    revision, or the open month's draft (marked DRAFT). Team owners get only their teams' lines (marked
    partial). Verify a ``zip`` offline with `manage.py audit_verify_export`."""
    export = exports.export(
        actor=request.auth,
        department_id=department_id,
        month=month[:16],
        fmt=query.format,
        revision=query.revision,
    )
    response = HttpResponse(export.data, content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
