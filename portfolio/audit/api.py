"""REST endpoints for reading and exporting the audit trail."""

from datetime import datetime
from typing import Any

from django.http import FileResponse
from ninja import Field, Query, Router, Schema
from ninja.pagination import PageNumberPagination, paginate

from portfolio.accounts import gate
from portfolio.audit import signing
from portfolio.audit.choices import AuditAction
from portfolio.audit.exports import build_export, signing_keys
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent

router = Router(tags=["audit"])


class AuditEventOut(Schema):
    sequence: int
    occurred_at: datetime
    actor_kind: str
    actor_label: str
    action: str
    object_type: str
    object_id: str
    object_repr: str
    department_id: int | None
    team_id: int | None
    request_id: str
    ip: str
    before: Any
    after: Any
    prev_hash: str
    hash: str


class SigningKeyOut(Schema):
    key_id: str
    algorithm: str
    status: str
    public_key_pem: str
    public_key_base64: str
    fingerprint_sha256: str


class AuditQuery(Schema):
    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    action: str = Field(
        "",
        description="An audit action, `<object>.<verb>` (e.g. `team.create`), or every action on one kind of "
        "object: its name and a dot (`team.`). The actions: "
        + ", ".join(f"`{a}`" for a in AuditAction.values),
    )
    department_id: int | None = None
    team_id: int | None = None
    object_type: str = ""
    object_id: str = ""

    def selection(self) -> AuditFilter:
        return AuditFilter(**self.dict())


@router.get("/events", response=list[AuditEventOut])
@paginate(PageNumberPagination, page_size=100)
def list_events(request, filters: Query[AuditQuery]):
    gate.require(request.auth, "audit.view")
    return filters.selection().apply(gate.visible(request.auth, AuditEvent)).order_by("-sequence")


# POST, not GET: an export writes an audit row in the caller's name, and a browser session on a GET is not
# CSRF-checked (a cross-site link would run it); on POST the session must send the token (portfolio.api).
@router.post("/export", response={200: None})
def export_events(request, filters: Query[AuditQuery], format: str = "jsonl"):
    """A zip with the events (JSONL or CSV) and a signed manifest; verify with `audit_verify_export`.
    The filters and ``format`` are query parameters; the body is ignored. A selection of more than
    1,000,000 events (``MAX_EXPORT_EVENTS``) is refused with 400 ``export_too_large``: export by time range."""
    export = build_export(actor=request.auth, selection=filters.selection(), fmt=format)
    response = FileResponse(open(export.path, "rb"), as_attachment=True, filename=export.filename)  # noqa: SIM115
    export.path.unlink()  # the open handle keeps the data readable until the response is sent
    return response


@router.get("/signing-keys", response=list[SigningKeyOut])
def list_signing_keys(request):
    """The public keys that verify export manifests: the current signer's first, then earlier ones
    (a manifest names its ``key_id``). Pin them; ``audit_verify_export --public-key-file`` takes the PEM."""
    gate.require(request.auth, "audit.view")
    return [
        {
            "key_id": key.key_id,
            "algorithm": signing.ALGORITHM,
            "status": key.status,
            "public_key_pem": key.pem,
            "public_key_base64": key.raw_base64,
            "fingerprint_sha256": key.fingerprint,
        }
        for key in signing_keys()
    ]
