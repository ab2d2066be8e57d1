"""Settings come from the environment, strictly; production settings pass Django's deploy checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portfolio.envparse import Env

ROOT = Path(__file__).resolve().parent.parent


def test_a_malformed_boolean_stops_start_up_naming_the_variable():
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG='maybe'"):
        Env({"DJANGO_DEBUG": "maybe"}).flag("DJANGO_DEBUG", False)


def test_an_integer_out_of_range_is_refused():
    with pytest.raises(ImproperlyConfigured, match="out of range"):
        Env({"N": "0"}).integer("N", 5, minimum=1)


def test_a_secret_is_read_from_its_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    assert Env({"API_SECRET_FILE": str(secret)}).required("API_SECRET") == "s3cret-value"


def test_a_secret_set_both_ways_is_ambiguous_and_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a")
    with pytest.raises(ImproperlyConfigured, match="either API_SECRET or API_SECRET_FILE"):
        Env({"API_SECRET": "b", "API_SECRET_FILE": str(secret)}).required("API_SECRET")


def test_an_unreadable_secret_file_is_named():
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        Env({"API_SECRET_FILE": "/nonexistent/secret"}).required("API_SECRET")


def _production_env(**extra) -> dict:
    db = settings.DATABASES["default"]
    host = db["HOST"]
    url = f"postgresql://{db['USER']}@/{db['NAME']}?host={host}" if host.startswith("/") else (
        f"postgresql://{db['USER']}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_"))}
    env.update(
        PORTFOLIO_ENV="production",
        DJANGO_SECRET_KEY="x9!" + "k" * 20 + "Qz#" + "m7" * 20,
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        DJANGO_ALLOWED_HOSTS="portfolio.example.internal",
        PORTFOLIO_DATA_DIR=str(settings.DATA_DIR),
    )
    env.update(extra)
    return env


def test_production_settings_pass_check_deploy_with_no_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=_production_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_database_url():
    env = _production_env()
    del env["DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


def test_responses_carry_security_headers_and_a_request_id(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert len(response["X-Request-ID"]) == 32


def test_a_well_formed_request_id_from_the_caller_is_kept_and_garbage_is_replaced(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="<script>")["X-Request-ID"] != "<script>"
