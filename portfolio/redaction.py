"""Scrubs anything shaped like one of our secrets out of log records (defence in depth).

Contract: a record that passes ``RedactSecretsFilter`` carries no personal access token, gateway API key,
playground ticket, bearer value, credential-named value (``api_key=…``, ``VLLM_API_KEY: …``,
``--password …``) or URL password, neither in its message nor in its traceback. Bare 64-hex strings are
left alone: an engine key is one, but so is every artifact id, which logs must keep readable; an engine
key is redacted where it appears as a credential (after ``Bearer`` or a credential name).
"""

from __future__ import annotations

import logging
import re

# Personal access tokens (pat_) and gateway API keys (slm_): keep the public key id, drop the secret.
SECRET_PATTERN = re.compile(r"\b(pat|slm)_([A-Za-z0-9]{4,16})_[A-Za-z0-9_\-]{8,}")
# Playground tickets (serving/gateway/tickets.py): slmt_<base64url payload>.<base64url signature>.
TICKET_PATTERN = re.compile(r"\bslmt_[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?")
# A value that the patterns above already redacted ends in "[": not again.
BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}(?![A-Za-z0-9._\-\[])")
# name=value, name: value, "name": "value", --name value, where the name says it is a credential.
CREDENTIAL_PATTERN = re.compile(
    # The name starts a run of word characters, at most 40 before the credential word: each run is scanned
    # from its start only (linear on long lines).
    r"(?i)((?<![\w-])[\w-]{0,40}(?:(?:api|engine|access)[_-]?key|secret(?:[_-]?key)?|password|passwd"
    r"|(?:access|refresh|id|api|auth)[_-]?token)"
    r"(?:[\"']?\s*[:=]\s*b?[\"']?|\s+(?=[^\s\[]*\d)))"
    # A token or key the patterns above redacted keeps its public key id.
    r"(?!(?:pat|slm|slmt)_)[^\s\"'&,;()\[\]{}<>]+"
)
# scheme://user:password@host
URL_PASSWORD_PATTERN = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s/@]+@")

_traceback_formatter = logging.Formatter()


def redact(text: str) -> str:
    text = SECRET_PATTERN.sub(r"\1_\2_[redacted]", text)
    text = TICKET_PATTERN.sub("slmt_[redacted]", text)
    text = BEARER_PATTERN.sub(r"\1[redacted]", text)
    text = CREDENTIAL_PATTERN.sub(r"\1[redacted]", text)
    return URL_PASSWORD_PATTERN.sub(r"\1[redacted]@", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # An exception's text (its message, a failed URL, a repr) can hold a secret too. Formatters render
        # exc_info only while exc_text is empty, so the redacted rendering put there is what they print;
        # exc_info itself stays for handlers that want the exception object.
        if record.exc_info and not record.exc_text:
            record.exc_text = _traceback_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
