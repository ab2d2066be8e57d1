"""Scrubs anything shaped like one of our secrets out of log records (defence in depth)."""

from __future__ import annotations

import logging
import re

# Personal access tokens (pat_), gateway API keys (slm_) and bearer headers.
SECRET_PATTERN = re.compile(r"\b(pat|slm)_([A-Za-z0-9]{4,16})_[A-Za-z0-9_\-]{8,}")
BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}")


def redact(text: str) -> str:
    text = SECRET_PATTERN.sub(r"\1_\2_[redacted]", text)
    return BEARER_PATTERN.sub(r"\1[redacted]", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
