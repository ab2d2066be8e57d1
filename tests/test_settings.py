"""Settings come from the environment, strictly; production settings pass Django's deploy checks."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portfolio.envparse import Env, database_settings, database_url

ROOT = Path(__file__).resolve().parent.parent


def test_a_malformed_boolean_stops_start_up_naming_the_variable():
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG='maybe'"):
        Env({"DJANGO_DEBUG": "maybe"}).flag("DJANGO_DEBUG", False)


def test_an_integer_out_of_range_is_refused():
    with pytest.raises(ImproperlyConfigured, match="out of range"):
        Env({"N": "0"}).integer("N", 5, minimum=1)


@pytest.mark.parametrize(
    "name, value",
    [("PORTFOLIO_NODE_HEARTBEAT_SECONDS", "10000000000"), ("PORTFOLIO_SESSION_SECONDS", str(10**12))],
)
def test_an_integer_setting_too_large_to_be_meant_stops_start_up(tmp_path, name, value):
    """Found by review: these were accepted, then overflowed a timer (the node's heartbeat thread died) or a
    date (every session save failed) once running."""
    result = _settings_in(_production_env(tmp_path, **{name: value}), "SESSION_COOKIE_AGE")
    assert result.returncode != 0
    assert f"{name}={value} is out of range" in result.stderr


def test_sizes_in_bytes_may_be_larger_than_other_integers(tmp_path):
    size = str(100 * 1024**3)
    result = _settings_in(_production_env(tmp_path, PORTFOLIO_MAX_IMPORT_BYTES=size), "MAX_IMPORT_BYTES")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["MAX_IMPORT_BYTES"] == int(size)


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


SECRETS = {
    "DJANGO_SECRET_KEY": "x9!" + "k" * 20 + "Qz#" + "m7" * 20,
    "PORTFOLIO_TOKEN_HASH_KEY": "token-hash-" + "t" * 40,
    "PORTFOLIO_ENGINE_KEY_SECRET": "engine-keys-" + "e" * 40,
}


def _secret_files(folder: Path, **values: str) -> dict:
    """``NAME_FILE`` variables for ``values`` (as compose passes secrets), each in a file of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {}
    for name, value in values.items():
        (folder / name.lower()).write_text(value + "\n")
        env[f"{name}_FILE"] = str(folder / name.lower())
    return env


def _production_env(tmp_path: Path, **extra) -> dict:
    db = settings.DATABASES["default"]
    host = db["HOST"]
    url = (
        f"postgresql://{db['USER']}@/{db['NAME']}?host={host}"
        if host.startswith("/")
        else (f"postgresql://{db['USER']}@{host}:{db['PORT'] or 5432}/{db['NAME']}")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_"))}
    env.update(
        PORTFOLIO_ENV="production",
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        DJANGO_ALLOWED_HOSTS="portfolio.example.internal",
        PORTFOLIO_DATA_DIR=str(settings.DATA_DIR),
        PORTFOLIO_AUDIT_SIGNER="false",  # as the processes that sign no audit export (the signing key is not here)
        **_secret_files(tmp_path / "secrets", **SECRETS),
    )
    env.update(extra)
    return {name: value for name, value in env.items() if value is not None}


_PRINT_SETTINGS = """
import json, sys, django
django.setup()
from django.conf import settings

def plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return [plain(item) for item in value] if isinstance(value, list) else value

print(json.dumps({name: plain(getattr(settings, name)) for name in sys.argv[1:]}, default=str))
"""


def _settings_in(env: dict, *names: str) -> subprocess.CompletedProcess:
    """A fresh process's settings ``names`` as JSON, or its start-up error."""
    return subprocess.run(
        [sys.executable, "-c", _PRINT_SETTINGS, *names],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy_with_no_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_run_tasks_inside_web_requests(tmp_path):
    result = _settings_in(
        _production_env(tmp_path, CELERY_TASK_ALWAYS_EAGER="true"), "CELERY_TASK_ALWAYS_EAGER"
    )
    assert result.returncode != 0 and "not in production" in result.stderr, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_database_url(tmp_path):
    env = _production_env(tmp_path)
    del env["DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


@pytest.mark.parametrize("name", ["PORTFOLIO_TOKEN_HASH_KEY", "PORTFOLIO_ENGINE_KEY_SECRET"])
def test_production_refuses_to_derive_a_secret_from_the_secret_key(tmp_path, name):
    env = _production_env(tmp_path)
    del env[f"{name}_FILE"]
    result = _settings_in(env, "TOKEN_HASH_KEY")
    assert result.returncode != 0
    assert f"{name} must be set (or {name}_FILE)" in result.stderr


@pytest.mark.parametrize("name", ["PORTFOLIO_TOKEN_HASH_KEY", "PORTFOLIO_ENGINE_KEY_SECRET"])
def test_a_production_secret_that_is_the_secret_key_is_refused(tmp_path, name):
    env = _production_env(
        tmp_path, **_secret_files(tmp_path / "same", **{name: SECRETS["DJANGO_SECRET_KEY"]})
    )
    result = _settings_in(env, "TOKEN_HASH_KEY")
    assert result.returncode != 0
    assert f"{name} must be a secret of its own" in result.stderr


def test_production_reads_each_secret_from_its_own_file_and_rotation_lists_too(tmp_path):
    old_keys = ["old-django-key-" + "a" * 30, "older-django-key-" + "b" * 30]
    env = _production_env(
        tmp_path,
        **_secret_files(
            tmp_path / "rotation",
            DJANGO_SECRET_KEY_FALLBACKS="\n".join(old_keys),
            PORTFOLIO_TOKEN_HASH_KEY_PREVIOUS="old-token-hash-" + "c" * 30,
        ),
    )
    result = _settings_in(
        env,
        "SECRET_KEY",
        "SECRET_KEY_FALLBACKS",
        "TOKEN_HASH_KEY",
        "TOKEN_HASH_KEY_PREVIOUS",
        "ENGINE_KEY_SECRET",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "SECRET_KEY": SECRETS["DJANGO_SECRET_KEY"],
        "SECRET_KEY_FALLBACKS": old_keys,
        "TOKEN_HASH_KEY": SECRETS["PORTFOLIO_TOKEN_HASH_KEY"],
        "TOKEN_HASH_KEY_PREVIOUS": ["old-token-hash-" + "c" * 30],
        "ENGINE_KEY_SECRET": SECRETS["PORTFOLIO_ENGINE_KEY_SECRET"],
    }


def test_a_short_secret_key_fallback_is_refused(tmp_path):
    result = _settings_in(_production_env(tmp_path, DJANGO_SECRET_KEY_FALLBACKS="short"), "SECRET_KEY")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY_FALLBACKS: every entry must be at least 32 characters" in result.stderr


def test_the_image_build_step_loads_production_settings_without_any_real_secret(tmp_path):
    """The Dockerfile collects static files in production mode with placeholders: they must still load."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    step = dockerfile[dockerfile.index("&& DJANGO_SECRET_KEY=build-only") : dockerfile.index("collectstatic")]
    placeholders = dict(re.findall(r"([A-Z_]+)=(\S+)", step))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_"))}
    env.update(placeholders, PORTFOLIO_ENV="production", PORTFOLIO_DATA_DIR=str(tmp_path))
    result = _settings_in(env, "STATIC_ROOT")
    assert result.returncode == 0, result.stderr


def test_a_database_password_full_of_url_characters_survives_a_round_trip_with_its_options():
    password = "p@ss/w#rd?:%&=+ üñí"
    db = {
        "NAME": "portfolio db",
        "USER": "app@corp",
        "PASSWORD": password,
        "HOST": "db.internal",
        "PORT": "6432",
        "OPTIONS": {
            "sslmode": "verify-full",
            "sslrootcert": "/run/secrets/ca.pem",
            "application_name": "a b",
        },
    }
    assert database_settings(database_url(db)) == db
    assert password not in database_url(db, with_password=False)
    socket = {**db, "HOST": "/var/run/postgresql", "PASSWORD": ""}
    assert database_settings(database_url(socket)) == socket


def test_a_bad_database_url_is_refused_without_repeating_its_password():
    with pytest.raises(ImproperlyConfigured) as refused:
        Env({"DATABASE_URL": "postgresql://u:s3cr3t pa ss@host/db?=x"}).database()
    assert "s3cr3t" not in str(refused.value)


def test_a_redis_password_from_its_file_is_put_into_the_url_quoted(tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text("p@ss:/#?\n")
    url = Env({"REDIS_URL": "redis://redis:6379/0", "REDIS_PASSWORD_FILE": str(secret)}).redis_url()
    assert url == "redis://:p%40ss%3A%2F%23%3F@redis:6379/0"
    from redis.connection import parse_url

    assert parse_url(url)["password"] == "p@ss:/#?"


def test_a_redis_password_needs_a_network_url_and_only_one_place():
    with pytest.raises(ImproperlyConfigured, match="needs a redis:// or rediss://"):
        Env({"REDIS_URL": "unix:///tmp/redis.sock", "REDIS_PASSWORD": "x"}).redis_url()
    with pytest.raises(ImproperlyConfigured, match="already carries a password"):
        Env({"REDIS_URL": "redis://:a@redis:6379/0", "REDIS_PASSWORD": "x"}).redis_url()


def test_trusted_proxies_are_addresses_or_networks_and_never_everyone():
    assert Env({}).networks("PORTFOLIO_TRUSTED_PROXIES", ["127.0.0.1"]) == ["127.0.0.1"]
    assert Env({"P": "10.0.0.5, 172.16.0.0/12,::1"}).networks("P", []) == ["10.0.0.5", "172.16.0.0/12", "::1"]
    for bad in ("*", "proxy.internal", "10.0.0.0/33"):
        with pytest.raises(ImproperlyConfigured, match="is not valid: expected IP addresses or networks"):
            Env({"P": bad}).networks("P", [])


def test_a_trusted_proxy_network_with_host_bits_is_refused_not_silently_ignored_as_uvicorn_would():
    with pytest.raises(ImproperlyConfigured, match=r"P: 172.30.0.1/24 has host bits set .*\(172.30.0.0/24\)"):
        Env({"P": "10.0.0.5,172.30.0.1/24"}).networks("P", [])


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.0/8, ::/0"])
def test_a_trusted_proxy_network_of_every_address_is_refused_as_star_is(everyone):
    with pytest.raises(ImproperlyConfigured, match="would trust every address"):
        Env({"P": everyone}).networks("P", [])


def test_responses_carry_security_headers_and_a_request_id(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert len(response["X-Request-ID"]) == 32


def test_a_well_formed_request_id_from_the_caller_is_kept_and_garbage_is_replaced(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="<script>")["X-Request-ID"] != "<script>"


def test_an_empty_development_secret_file_left_by_a_crash_is_replaced(tmp_path):
    from portfolio.settings import _development_secret

    (tmp_path / "secret_key").touch(mode=0o600)
    value = _development_secret(tmp_path / "secret_key")
    assert len(value) >= 32
    assert (tmp_path / "secret_key").read_text() == value
    assert _development_secret(tmp_path / "secret_key") == value


def test_processes_starting_together_all_use_the_first_ones_development_secret(tmp_path, monkeypatch):
    from portfolio.settings import _development_secret

    secret = tmp_path / "data" / "secret_key"
    real_link = os.link

    def another_process_first(source, destination):
        # Another process (the worker, beat) writes its secret after this one found none.
        Path(destination).write_text("the-first-processes-secret-" + "x" * 30)
        real_link(source, destination)

    monkeypatch.setattr(os, "link", another_process_first)
    assert _development_secret(secret) == "the-first-processes-secret-" + "x" * 30
    assert secret.read_text() == "the-first-processes-secret-" + "x" * 30
    assert [path.name for path in secret.parent.iterdir()] == ["secret_key"]  # no temporary file left


def test_the_development_secret_and_its_folder_are_readable_by_their_owner_only(tmp_path):
    from portfolio.settings import _development_secret

    secret = tmp_path / "data" / "secret_key"
    _development_secret(secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700


def test_the_lost_window_of_a_node_outlasts_an_agent_restart_unless_set(tmp_path):
    """Found by review: three heartbeats (15 s) unless set, shorter than an agent's restart (a worker upgrade),
    whose node was then lost and every engine on it stopped as an orphan and loaded again from scratch."""
    result = _settings_in(_production_env(tmp_path), "NODE_LOST_AFTER_SECONDS")
    assert result.returncode == 0 and json.loads(result.stdout) == {"NODE_LOST_AFTER_SECONDS": 60}, (
        result.stderr
    )
    slow = _settings_in(
        _production_env(tmp_path, PORTFOLIO_NODE_HEARTBEAT_SECONDS="30"), "NODE_LOST_AFTER_SECONDS"
    )
    assert json.loads(slow.stdout) == {"NODE_LOST_AFTER_SECONDS": 90}, slow.stderr


def test_the_lost_window_of_a_node_is_set_but_never_under_two_heartbeats(tmp_path):
    """It was three heartbeats, fixed: a node on a slow network had no way to be given longer."""
    env = _production_env(tmp_path, PORTFOLIO_NODE_LOST_AFTER_SECONDS="60")
    result = _settings_in(env, "NODE_LOST_AFTER_SECONDS")
    assert result.returncode == 0 and json.loads(result.stdout) == {"NODE_LOST_AFTER_SECONDS": 60}, (
        result.stderr
    )
    refused = _settings_in(
        _production_env(tmp_path, PORTFOLIO_NODE_LOST_AFTER_SECONDS="9"), "NODE_LOST_AFTER_SECONDS"
    )
    assert refused.returncode != 0 and "PORTFOLIO_NODE_LOST_AFTER_SECONDS" in refused.stderr


def test_a_periodic_task_queued_behind_long_ones_expires_when_its_next_is_due():
    """Eval runs, merges and imports share the control workers with the beat's tasks: without an expiry a
    worker busy for an hour came back to 1,800 queued flushes, run back to back."""
    from django.conf import settings

    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert 0 < entry["options"]["expires"] <= entry["schedule"], name
