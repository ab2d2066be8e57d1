"""Secrets stay out of logs, tracebacks and reprs: the redacting filter, Celery processes keeping it, and the
objects that hold a secret printing without it."""

from __future__ import annotations

import io
import logging
import logging.config

import pytest
from django.conf import settings

from portfolio.accounts import secrets_hashing
from portfolio.redaction import RedactSecretsFilter, redact
from serving.agent import engine_key
from serving.gateway import tickets
from serving.gateway.routing import ReplicaInfo
from tests.gateway.key_records import key_record

GATEWAY_SECRET = "x" * 43
GATEWAY_KEY = f"slm_abcdefghijkl_{GATEWAY_SECRET}"
ENGINE_KEY = "3f" * 32  # as serving.agent.engine_key makes them: an HMAC-SHA256 hex digest
ARTIFACT_ID = "9c" * 32  # a sha256, just as long: must stay readable


@pytest.fixture
def emitted(monkeypatch):
    """``emitted()``: what a handler with the redacting filter has written for ``tests.redaction`` so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("tests.redaction")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    return stream.getvalue


@pytest.fixture
def celery_logging(monkeypatch):
    """Lets Celery's logging start-up run again in this process; the root logger is put back afterwards."""
    from portfolio.celery import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name in ("_MP_FORK_LOGLEVEL_", "_MP_FORK_LOGFILE_", "_MP_FORK_LOGFORMAT_"):
        monkeypatch.delenv(name, raising=False)  # set by the start-up: restored with it
    monkeypatch.setattr(app.log, "already_setup", False)
    yield app
    logging.config.dictConfig(settings.LOGGING)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_gateway_key_keeps_its_key_id_and_loses_its_secret():
    assert redact(f"caller sent Bearer {GATEWAY_KEY}") == "caller sent Bearer slm_abcdefghijkl_[redacted]"


@pytest.mark.parametrize(
    "line", [f"api_key={GATEWAY_KEY}", f"--api-key {GATEWAY_KEY}", f"secret: {GATEWAY_KEY}"]
)
def test_a_gateway_key_after_a_credential_name_keeps_its_key_id_too(line):
    assert redact(line).endswith("slm_abcdefghijkl_[redacted]"), redact(line)


def test_a_playground_ticket_is_redacted_whole():
    ticket = tickets.mint(deployment="chat", model="base", team_id=1, team="t", department_id=1, user_id=1)
    cleaned = redact(f"upstream said no to Bearer {ticket} (retrying)")
    assert cleaned == "upstream said no to Bearer slmt_[redacted] (retrying)"


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer {key}",
        "engine env {{'VLLM_API_KEY': '{key}', 'HF_HUB_OFFLINE': '1'}}",
        "probe api_key={key} failed",
        "started with --api-key {key}",
        "replica auth=b'Bearer {key}'",
    ],
)
def test_an_engine_key_is_redacted_where_it_is_a_credential(line):
    assert ENGINE_KEY not in redact(line.format(key=ENGINE_KEY))


def test_the_real_engine_key_shape_is_covered():
    key = engine_key(7)
    assert len(key) == len(ENGINE_KEY)
    assert key not in redact(f"VLLM_API_KEY={key}")


def test_a_bare_sha256_such_as_an_artifact_id_stays_readable():
    line = f"artifact {ARTIFACT_ID} stored; sha256={ARTIFACT_ID}"
    assert redact(line) == line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://:[redacted]@redis:6379/0"),
        ("postgres://app:s3cr3t@db:5432/portfolio", "postgres://app:[redacted]@db:5432/portfolio"),
        ("https://minio:9000/bucket/a", "https://minio:9000/bucket/a"),
    ],
)
def test_a_password_in_a_url_is_redacted_and_the_rest_kept(url, expected):
    assert redact(f"cannot connect to {url}: refused") == f"cannot connect to {expected}: refused"


def test_a_logged_exception_loses_the_secret_in_its_text(emitted):
    logger = logging.getLogger("tests.redaction")
    try:
        raise RuntimeError(f"the engine refused Bearer {ENGINE_KEY} from {GATEWAY_KEY}")
    except RuntimeError:
        logger.exception("call failed")
    text = emitted()
    assert "call failed" in text and "RuntimeError: the engine refused Bearer [redacted]" in text
    assert "Traceback (most recent call last)" in text
    assert ENGINE_KEY not in text and GATEWAY_SECRET not in text


def test_a_secret_in_the_log_arguments_is_redacted(emitted):
    logging.getLogger("tests.redaction").warning("caller sent %s", GATEWAY_KEY)
    assert GATEWAY_SECRET not in emitted()


def test_celery_start_up_keeps_the_redacting_filter_on_every_root_handler(celery_logging, capsys):
    # What the worker and beat run at start-up (Worker.setup_logging -> app.log.setup).
    celery_logging.log.setup_logging_subsystem(loglevel="INFO")
    root = logging.getLogger()
    assert root.handlers
    for handler in root.handlers:
        assert any(isinstance(f, RedactSecretsFilter) for f in handler.filters), handler
    logging.getLogger("portfolio.tasks").warning("engine call with Bearer %s", GATEWAY_KEY)
    err = capsys.readouterr().err
    assert "engine call with Bearer slm_abcdefghijkl_[redacted]" in err
    assert GATEWAY_SECRET not in err


def test_an_issued_secret_prints_without_its_plaintext():
    issued = secrets_hashing.issue("pat")
    assert issued.key_id in repr(issued)
    assert issued.plaintext not in repr(issued) and issued.hash not in repr(issued)


def test_a_replica_prints_without_its_engine_key():
    replica = ReplicaInfo(7, "http://127.0.0.1:8000", f"Bearer {ENGINE_KEY}".encode())
    assert "127.0.0.1:8000" in repr(replica) and ENGINE_KEY not in repr(replica)


def test_a_key_record_prints_without_its_secret_hash():
    record = key_record(secret_hash=ARTIFACT_ID)
    assert record.key_id in repr(record) and ARTIFACT_ID not in repr(record)


def test_every_handler_a_django_record_reaches_redacts():
    """Django's default logging gives its ``django`` logger a console handler of its own (DEBUG only), without
    the filter; LOGGING takes it away, so Django's records reach the root's handlers only."""
    logging.config.dictConfig(settings.LOGGING)
    logger, handlers = logging.getLogger("django.request"), []
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    assert handlers and all(
        any(isinstance(f, RedactSecretsFilter) for f in handler.filters) for handler in handlers
    ), handlers
