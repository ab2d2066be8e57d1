"""Audit work on the control queue: anchoring the chain head outside the database."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from portfolio.audit import anchors, chain
from portfolio.audit.models import AuditEvent

logger = logging.getLogger("portfolio.audit.anchor")


@shared_task(name="audit.anchor_head")
def anchor_head() -> dict:
    """Log the chain head (sequence and hash) every few minutes (celery beat).

    A log line, not an audit row: an anchor row inside the chain would be rewritten along with the history
    it is meant to pin. Logs leave the machine (the container log driver, a SIEM) where whoever can rewrite
    the table cannot reach; ``manage.py audit_verify --anchors-from LOGFILE`` checks them later against the
    database, ``python -m portfolio.audit.offline EXPORT --anchors-from LOGFILE`` against an export. The logger
    is at INFO whatever PORTFOLIO_LOG_LEVEL says (settings.LOGGING): a quieter log must not lose the anchor.
    """
    head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash").first()
    anchor = {
        "sequence": head["sequence"] if head else 0,
        "hash": head["hash"] if head else chain.GENESIS_HASH,
        "at": chain.format_time(timezone.now()),
    }
    logger.info(anchors.LOG_FORMAT, anchor)
    return anchor
