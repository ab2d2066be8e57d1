"""Django settings: every value comes from the environment (see README "Configuration").

With no ``DATABASE_URL`` / ``REDIS_URL`` the embedded default starts PostgreSQL and Redis from pip
wheels under ``PORTFOLIO_DATA_DIR``; production sets both and ``PORTFOLIO_ENV=production``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from portfolio import atomicwrites, embedded
from portfolio.commands import LOG_LEVELS
from portfolio.envparse import Env, database_settings

env = Env()
BASE_DIR = Path(__file__).resolve().parent.parent

PORTFOLIO_ENV = env.choice("PORTFOLIO_ENV", "development", {"development", "production"})
PRODUCTION = PORTFOLIO_ENV == "production"
DEBUG = env.flag("DJANGO_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when PORTFOLIO_ENV=production.")

DATA_DIR = env.path("PORTFOLIO_DATA_DIR", BASE_DIR / ".portfolio")


def _development_secret(path: Path) -> str:
    """A per-installation secret kept in the data folder, readable by its owner only."""
    if path.exists() and (value := path.read_text().strip()):
        return value
    embedded.private_folder(path.parent)
    return atomicwrites.create_once(path, secrets.token_urlsafe(50).encode()).decode().strip()


if PRODUCTION:
    SECRET_KEY = env.required("DJANGO_SECRET_KEY")
else:
    SECRET_KEY = env.text("DJANGO_SECRET_KEY") or _development_secret(DATA_DIR / "secret_key")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 32 characters.")
# Rotation: the new key signs, the keys listed here still verify (sessions, signed values) until dropped.
SECRET_KEY_FALLBACKS = env.secret_list("DJANGO_SECRET_KEY_FALLBACKS", min_length=32)


def _derived_key(label: str) -> bytes:
    return hmac.new(SECRET_KEY.encode(), label.encode(), hashlib.sha256).digest()


# Keys for keyed hashes of tokens and for signing audit exports; separate secrets in production are best.
TOKEN_HASH_KEY: bytes = (env.text("PORTFOLIO_TOKEN_HASH_KEY") or "").encode() or _derived_key("token-hash")
# Audit exports are signed with an Ed25519 private key (PEM or base64 of the raw 32 bytes; generated into the
# data folder in development); verifiers hold public keys (the audit page, the API), earlier keys' too after a
# rotation (PORTFOLIO_AUDIT_PREVIOUS_PUBLIC_KEYS). Worker, beat, nodes: PORTFOLIO_AUDIT_SIGNER=false, no key.
from portfolio.audit import signing as audit_signing  # noqa: E402 - kept with the lines it serves

AUDIT_SIGNER = env.flag("PORTFOLIO_AUDIT_SIGNER", True)
AUDIT_SIGNING_KEY = audit_signing.signing_key_setting(
    env.text("PORTFOLIO_AUDIT_SIGNING_KEY"), signer=AUDIT_SIGNER, production=PRODUCTION, data_dir=DATA_DIR
)
AUDIT_PREVIOUS_PUBLIC_KEYS = audit_signing.public_keys_setting(
    "PORTFOLIO_AUDIT_PREVIOUS_PUBLIC_KEYS", env.text("PORTFOLIO_AUDIT_PREVIOUS_PUBLIC_KEYS")
)

ALLOWED_HOSTS = env.csv_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.csv_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])


def _own_secret(name: str) -> bytes:
    """A production secret set on its own (``NAME`` or ``NAME_FILE``): rotating DJANGO_SECRET_KEY leaves it be."""
    value = env.required(name)
    if len(value) < 32:
        raise ImproperlyConfigured(f"{name} must be at least 32 characters.")
    if value == SECRET_KEY or value in SECRET_KEY_FALLBACKS:
        raise ImproperlyConfigured(f"{name} must be a secret of its own, not DJANGO_SECRET_KEY.")
    return value.encode()


# Development derives the token hash key from the secret key (above); production sets it on its own. Rotation:
# the new key hashes, the keys in PORTFOLIO_TOKEN_HASH_KEY_PREVIOUS still verify tokens and API keys.
if PRODUCTION:
    TOKEN_HASH_KEY = _own_secret("PORTFOLIO_TOKEN_HASH_KEY")
TOKEN_HASH_KEY_PREVIOUS: list[bytes] = [
    key.encode()
    for key in env.secret_list("PORTFOLIO_TOKEN_HASH_KEY_PREVIOUS", min_length=32 if PRODUCTION else 1)
]

# Budget alert webhooks are signed with HMAC-SHA256 under this key, set on its own (PORTFOLIO_WEBHOOK_SECRET or
# _FILE) so that receivers keep it when DJANGO_SECRET_KEY rotates; unset, it is derived from the secret key.
_webhook_secret = env.text("PORTFOLIO_WEBHOOK_SECRET")
if _webhook_secret is not None and len(_webhook_secret) < 32:
    raise ImproperlyConfigured("PORTFOLIO_WEBHOOK_SECRET must be at least 32 characters.")
WEBHOOK_SECRET: bytes = _webhook_secret.encode() if _webhook_secret else _derived_key("webhook")

# E-mail (budget alerts) through Django's mail backend: SMTP when EMAIL_HOST is set, else the console.
EMAIL_HOST = env.text("EMAIL_HOST") or ""
EMAIL_BACKEND = env.text("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env.integer("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = env.text("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env.text("EMAIL_HOST_PASSWORD") or ""  # or EMAIL_HOST_PASSWORD_FILE
EMAIL_USE_TLS = env.flag("EMAIL_USE_TLS", True)
EMAIL_USE_SSL = env.flag("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    EMAIL_USE_TLS = False  # implicit TLS (port 465) wins; Django refuses both
EMAIL_TIMEOUT = env.integer("EMAIL_TIMEOUT", 10, minimum=1, maximum=120)
DEFAULT_FROM_EMAIL = env.text("DEFAULT_FROM_EMAIL") or "portfolio@localhost"

# --- Services -------------------------------------------------------------------------------------
_database = env.database()
_redis_url = env.redis_url()
EMBEDDED_SERVICES = []
if _database is None:
    if PRODUCTION:
        raise ImproperlyConfigured("DATABASE_URL must be set when PORTFOLIO_ENV=production.")
    _database = database_settings(embedded.ensure_postgres(DATA_DIR))
    EMBEDDED_SERVICES.append("postgres")
if _redis_url is None:
    if PRODUCTION:
        raise ImproperlyConfigured("REDIS_URL must be set when PORTFOLIO_ENV=production.")
    _redis_url = embedded.ensure_redis(DATA_DIR)
    EMBEDDED_SERVICES.append("redis")
REDIS_URL = _redis_url


# A password from DATABASE_PASSWORD(_FILE) keeps the secret out of the URL; the URL's query string gives
# libpq's parameters (sslmode, sslrootcert, ...), kept in OPTIONS.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        **_database,
        "CONN_MAX_AGE": env.integer("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        "CONN_HEALTH_CHECKS": True,
    }
}
# The role the application connects as (DATABASE_URL) when migrations run as the owner: `portfolio migrate`
# grants it ordinary DML everywhere but only INSERT and SELECT on the audit trail (portfolio/dbroles.py).
DATABASE_APP_ROLE = env.text("DATABASE_APP_ROLE")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}


def _celery_broker(url: str) -> str:
    # kombu spells a Redis unix socket "redis+socket://PATH".
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


CELERY_BROKER_URL = env.text("CELERY_BROKER_URL") or _celery_broker(REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = "control"
# Long control tasks have their own queue and worker (`portfolio worker --long`): the periodic ones waited behind.
CONTROL_LONG_QUEUE = "control.long"
LONG_CONTROL_TASKS = (
    "training.run_endpoint_eval",
    "training.merge_adapter",
    "training.ingest_dataset",
    "registry.import_version",
    "registry.verify_artifact",
    "accounts.sync_directory",
)
CELERY_TASK_ROUTES = {name: {"queue": CONTROL_LONG_QUEUE} for name in LONG_CONTROL_TASKS}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis gives a task not acknowledged within this to another worker (late acks: any still running); above the
# longest import or fine-tune watch, a long task redelivered finds its run's live lease and exits (leases.py).
BROKER_VISIBILITY_TIMEOUT = env.integer("PORTFOLIO_BROKER_VISIBILITY_TIMEOUT", 7 * 24 * 3600, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": BROKER_VISIBILITY_TIMEOUT}
TASK_LEASE_SECONDS = env.integer("PORTFOLIO_TASK_LEASE_SECONDS", 30, minimum=1, maximum=3600)
# Development only: tasks run inline in the process that sends them (a fine-tune inside a web request).
CELERY_TASK_ALWAYS_EAGER = env.flag("CELERY_TASK_ALWAYS_EAGER", False)
if PRODUCTION and CELERY_TASK_ALWAYS_EAGER:
    raise ImproperlyConfigured("CELERY_TASK_ALWAYS_EAGER runs tasks inside web requests: not in production.")
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# The machine this process runs on: its node agent consumes the queue "node.<NODE_NAME>".
NODE_NAME = env.text("PORTFOLIO_NODE_NAME") or socket.gethostname()

# --- Artifacts and imports ------------------------------------------------------------------------
ARTIFACT_STORE = env.choice("PORTFOLIO_STORAGE", "local", {"local", "s3"})
ARTIFACT_ROOT = env.path("PORTFOLIO_ARTIFACT_ROOT", DATA_DIR / "artifacts")
# Where engines and trainers keep verified working copies of artifacts on each node.
ARTIFACT_CACHE = env.path("PORTFOLIO_ARTIFACT_CACHE", DATA_DIR / "cache" / "artifacts")
MINIO_ENDPOINT = env.text("MINIO_ENDPOINT") or ""
MINIO_ACCESS_KEY, MINIO_SECRET_KEY = env.text("MINIO_ACCESS_KEY") or "", env.text("MINIO_SECRET_KEY") or ""
MINIO_BUCKET = env.text("MINIO_BUCKET") or "portfolio-artifacts"
MINIO_SECURE = env.flag("MINIO_SECURE", True)
MINIO_REGION = env.text("MINIO_REGION")
MINIO_PUBLIC_URL = env.text("PORTFOLIO_MINIO_PUBLIC_URL") or ""  # browsers' address: downloads redirect there
if ARTIFACT_STORE == "s3" and not (MINIO_ENDPOINT and MINIO_ACCESS_KEY and MINIO_SECRET_KEY):
    raise ImproperlyConfigured(
        "PORTFOLIO_STORAGE=s3 needs MINIO_ENDPOINT, MINIO_ACCESS_KEY and MINIO_SECRET_KEY."
    )
# Server folders an admin allows importing from; nothing outside them is ever read.
IMPORT_ROOTS = [
    Path(p).resolve() for p in env.csv_list("PORTFOLIO_IMPORT_ROOTS", [str(DATA_DIR / "imports")])
]
MAX_IMPORT_BYTES = env.integer("PORTFOLIO_MAX_IMPORT_BYTES", 40 * 1024**3, minimum=1, maximum=1 << 50)
MAX_UPLOAD_BYTES = env.integer("PORTFOLIO_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1, maximum=1 << 50)
GGUF_CONVERSION_CACHE = env.path("PORTFOLIO_GGUF_CONVERSION_CACHE", DATA_DIR / "cache" / "gguf")
GGUF_CONVERT_TIMEOUT = env.integer("PORTFOLIO_GGUF_CONVERT_TIMEOUT", 1800, minimum=10)
# Hub: huggingface_hub reads HF_ENDPOINT (a mirror), HF_HUB_OFFLINE; production imports need one or HUB_PUBLIC.
HF_CACHE_DIR = env.text("HF_HUB_CACHE")
HUB_PUBLIC = env.flag("PORTFOLIO_HUB_PUBLIC", False)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Request bodies Django serves are refused past these (413) before Django reads them (portfolio/bodylimit.py):
# upload routes take MAX_UPLOAD_BYTES plus this much for their form fields, every other route this much (/v1: below).
MAX_REQUEST_BODY_BYTES = env.integer("PORTFOLIO_MAX_REQUEST_BODY_BYTES", 1024 * 1024, minimum=1024)

# --- Serving --------------------------------------------------------------------------------------
NODE_POOL = env.text("PORTFOLIO_NODE_POOL") or "local-cpu"
# Where this node's engines listen: loopback on one machine, a private interface the gateway reaches else.
NODE_ADDRESS = env.text("PORTFOLIO_NODE_ADDRESS") or "127.0.0.1"
NODE_HEARTBEAT_SECONDS = env.integer("PORTFOLIO_NODE_HEARTBEAT_SECONDS", 5, minimum=1)
# Silent this long, a node is lost (replicas placed elsewhere, engines stopped when its agent returns): a minute
# unless set, at least two beats; an agent restarted within it re-adopts its engines (review: 15 s was too short).
_LOST_DEFAULT, _LOST_LEAST = max(60, 3 * NODE_HEARTBEAT_SECONDS), 2 * NODE_HEARTBEAT_SECONDS
NODE_LOST_AFTER_SECONDS = env.integer("PORTFOLIO_NODE_LOST_AFTER_SECONDS", _LOST_DEFAULT, minimum=_LOST_LEAST)
ENGINE_PYTHON = {
    "cpu": env.text("PORTFOLIO_ENGINE_PYTHON_CPU") or str(BASE_DIR / ".venv-engine" / "bin" / "python"),
    "gpu": env.text("PORTFOLIO_ENGINE_PYTHON_GPU") or str(BASE_DIR / ".venv-engine-gpu" / "bin" / "python"),
}
ENGINE_START_TIMEOUT = env.integer("PORTFOLIO_ENGINE_START_TIMEOUT", 900, minimum=30)
ENGINE_UNHEALTHY_GRACE = env.integer("PORTFOLIO_ENGINE_UNHEALTHY_GRACE", 30, minimum=5)
ENGINE_MAX_RESTARTS = env.integer("PORTFOLIO_ENGINE_MAX_RESTARTS", 5, minimum=0)
ENGINE_RESTART_BACKOFF = env.integer("PORTFOLIO_ENGINE_RESTART_BACKOFF", 5, minimum=1)
ENGINE_KEY_SECRET: bytes = (
    _own_secret("PORTFOLIO_ENGINE_KEY_SECRET")
    if PRODUCTION
    else (env.text("PORTFOLIO_ENGINE_KEY_SECRET") or "").encode() or _derived_key("engine-keys")
)
# --- Gateway: portfolio/gatewaysettings.py -----------------------------------------------------------
from portfolio.gatewaysettings import *  # noqa: E402, F403 - a block of settings of its own

# --- Training ---------------------------------------------------------------------------------------
# Where jobs reach the gateway (distillation asks a teacher endpoint through it, metered and billed).
GATEWAY_INTERNAL_URL = env.text("PORTFOLIO_GATEWAY_URL") or "http://127.0.0.1:8000"
TRAINING_MAX_ATTEMPTS = env.integer("PORTFOLIO_TRAINING_MAX_ATTEMPTS", 3, minimum=1)
TRAINING_HEARTBEAT_SECONDS = env.integer("PORTFOLIO_TRAINING_HEARTBEAT_SECONDS", 5, minimum=1)
TRAINING_STALE_AFTER_SECONDS = env.integer("PORTFOLIO_TRAINING_STALE_AFTER_SECONDS", 120, minimum=5)
# A merge process running past this is stopped and its job failed (a 17B model on CPU takes tens of minutes).
MERGE_TIMEOUT_SECONDS = env.integer("PORTFOLIO_MERGE_TIMEOUT_SECONDS", 3 * 3600, minimum=10)
# A merge no control worker took up in this long (a lost message, busy workers) is sent again, each time as long,
# and failed after six times as long: a queued merge refuses every other merge of its adapter.
MERGE_QUEUED_AFTER_SECONDS = env.integer("PORTFOLIO_MERGE_QUEUED_AFTER_SECONDS", 2 * 3600, minimum=60)
MERGES_PER_TEAM = env.integer("PORTFOLIO_MERGES_PER_TEAM", 1, minimum=1, maximum=100)  # a team's, in flight
# Eval runs and imports (Hub, folders, GGUF) a team may have queued or running at once, and its uploads (datasets,
# adapter archives) waiting on disk for an ingest or import: they share the long workers with every team's work.
EVAL_RUNS_PER_TEAM = env.integer("PORTFOLIO_EVAL_RUNS_PER_TEAM", 3, minimum=1, maximum=100)
IMPORTS_PER_TEAM = env.integer("PORTFOLIO_IMPORTS_PER_TEAM", 2, minimum=1, maximum=100)
UPLOADS_PER_TEAM = env.integer("PORTFOLIO_UPLOADS_PER_TEAM", 4, minimum=1, maximum=100)
# Usable keys (not revoked, not expired) a team may hold: per-key ceilings bound it only as far as keys count.
KEYS_PER_TEAM = env.integer("PORTFOLIO_KEYS_PER_TEAM", 100, minimum=1, maximum=10_000)
# The portfolio page hints at a candidate within this many points (of 100) of production's, cheaper or smaller.
PORTFOLIO_HINT_MARGIN_POINTS = env.integer("PORTFOLIO_HINT_MARGIN_POINTS", 2, minimum=0, maximum=100)

# Chargeback: one currency for the organisation; a month closes this many hours after it ends (late usage
# settles first); later usage of a closed month goes to adjustment lines for this many months after it.
BILLING_CURRENCY = env.choice(
    "PORTFOLIO_BILLING_CURRENCY",
    "EUR",
    {"EUR", "USD", "GBP", "CHF", "JPY", "SEK", "NOK", "DKK", "PLN", "CAD", "AUD", "INR"},
)
BILLING_CLOSE_AFTER_HOURS = env.integer("PORTFOLIO_BILLING_CLOSE_AFTER_HOURS", 6, minimum=0, maximum=24 * 92)
BILLING_ADJUSTMENT_MONTHS = env.integer("PORTFOLIO_BILLING_ADJUSTMENT_MONTHS", 3, minimum=1, maximum=120)
# Budget alert webhooks time out soon (the alert task must not hang) and call no loopback / private address (a
# team owner could make the platform call its insides) unless allowed or listed. Set, alerts go only to these
# hosts (".corp.example": it and its hosts) and e-mail domains; unset, production takes none typed in (README).
BILLING_WEBHOOK_TIMEOUT = env.integer("PORTFOLIO_BILLING_WEBHOOK_TIMEOUT", 5, minimum=1, maximum=30)
BILLING_WEBHOOK_PRIVATE_HOSTS = env.flag("PORTFOLIO_BILLING_WEBHOOK_PRIVATE_HOSTS", False)
BILLING_WEBHOOK_HOSTS = env.csv_list("PORTFOLIO_BILLING_WEBHOOK_HOSTS", [])
BILLING_ALERT_EMAIL_DOMAINS = env.csv_list("PORTFOLIO_BILLING_ALERT_EMAIL_DOMAINS", [])

# Raw usage events are kept this many months after their month ended (monthly partitions, dropped whole);
# hourly rollups, billing's ledger and statements are separate tables and outlive them.
USAGE_RETENTION_MONTHS = env.integer("PORTFOLIO_USAGE_RETENTION_MONTHS", 13, minimum=1, maximum=1200)

CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "training-reap-jobs": {"task": "training.reap_stale_jobs", "schedule": 30.0},
    "training-reap-ingests": {"task": "training.reap_stale_ingests", "schedule": 60.0},
    "training-reap-eval-runs": {"task": "training.reap_stale_eval_runs", "schedule": 60.0},
    "training-reap-merges": {"task": "training.reap_stale_merges", "schedule": 60.0},
    "gateway-flush-usage": {"task": "gateway.flush_usage", "schedule": 2.0},
    "gateway-rollup-usage": {"task": "gateway.rollup_usage", "schedule": 60.0},
    "serving-reconcile": {"task": "serving.reconcile_all", "schedule": float(NODE_HEARTBEAT_SECONDS * 2)},
    # Billing's serving meter: a replica run whose start or end was missed costs at most this interval.
    "serving-meter-replicas": {"task": "serving.meter_replicas", "schedule": 60.0},
    # Rollouts: a canary's figures since it started, judged; promoted or rolled back (serving/rollouts.py).
    "serving-step-rollouts": {"task": "serving.step_rollouts", "schedule": 30.0},
    "registry-reap-imports": {"task": "registry.reap_stale_imports", "schedule": 60.0},
    # What registrations killed mid-way (imports, ingests, fine-tunes) left in the artifact store.
    "registry-sweep-pending-writes": {
        "task": "registry.sweep_pending_writes",
        "schedule": 900.0,
        "options": {"expires": 900},  # one queued behind long control tasks is dropped, not run twice over
    },
    # Billing's storage meter: a figure per UTC day, refreshed hourly so that no day is ever missed.
    "registry-meter-storage": {"task": "registry.meter_storage", "schedule": 3600.0},
    # The chain head into the logs, which leave this machine: a later rewrite of history is detectable.
    "audit-anchor-head": {"task": "audit.anchor_head", "schedule": 300.0},
    "billing-close-statements": {"task": "billing.close_statements", "schedule": 3600.0},
    "gateway-usage-partitions": {"task": "gateway.maintain_usage_partitions", "schedule": 86400.0},
    # Alerts, and the spend the gateway's hard limits compare against (its counters cover the calls between).
    "billing-check-budgets": {"task": "billing.check_budgets", "schedule": 300.0},
    "accounts-clear-sessions": {"task": "accounts.clear_sessions", "schedule": 3600.0},
}

# --- Django ---------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "portfolio.accounts",  # first: its createsuperuser and changepassword (audited) are the ones found
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "django_htmx",
    "ninja",
    "portfolio.audit",
    "portfolio.registry",
    "portfolio.billing",
    "serving",
    "serving.gateway",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portfolio.staticfiles.StaticFilesMiddleware",
    "portfolio.requestcontext.RequestIdMiddleware",
    "portfolio.accounts.middleware.RealmFormActionCSPMiddleware",  # django-csp's
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portfolio.nostore.NoStoreMiddleware",  # what a signed-in person saw is not kept for Back after sign-out
    "portfolio.accounts.middleware.SsoSessionKeyMiddleware",  # a sign-on session's record follows its key
    "portfolio.accounts.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portfolio.dataerrors.DataErrorMiddleware",  # a NUL in a URL or filter is a 400, not a 500
]
ROOT_URLCONF = "portfolio.urls"
ASGI_APPLICATION = "portfolio.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portfolio.accounts.context.navigation",
            ],
            "libraries": {
                "badges": "portfolio.templatetags.badges",
                "formatting": "portfolio.templatetags.formatting",
            },
        },
    }
]

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
# Lock an account (per user name and per client address) after repeated failed logins.
LOGIN_FAILURE_LIMIT = env.integer("PORTFOLIO_LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = env.integer("PORTFOLIO_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
PERSONAL_TOKEN_MAX_DAYS = env.integer("PORTFOLIO_PERSONAL_TOKEN_MAX_DAYS", 365, minimum=1, maximum=36500)
# Single sign-on with OpenID Connect (Keycloak), read by portfolio.accounts.sso.config: off unless all are set.
OIDC = env.oidc(production=PRODUCTION)
# Password sign-in: "everyone", "admins" only (break-glass) or "off"; the last two need single sign-on.
LOCAL_SIGN_IN = env.local_sign_in(oidc=OIDC)
# The directory sync (accounts.sso.sync): a read-only service-account client of the same realm; off unless set.
OIDC_SYNC = env.oidc_sync(OIDC)
if OIDC_SYNC:
    CELERY_BEAT_SCHEDULE["accounts-sync-directory"] = {
        "task": "accounts.sync_directory",
        "schedule": float(OIDC_SYNC["interval"]),
    }
# A periodic task queued behind others (the sync's too: so here) is dropped once its next is due; idempotent.
for _entry in CELERY_BEAT_SCHEDULE.values():
    _entry.setdefault("options", {}).setdefault("expires", _entry["schedule"])

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "portfolio" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Development serves static files straight from the source folders, so no collectstatic is needed.
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- Security -------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.integer("PORTFOLIO_SESSION_SECONDS", 8 * 3600, minimum=300)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.flag("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env.integer("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env.flag("DJANGO_BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The reverse proxies whose X-Forwarded-For / -Proto are believed (`portfolio web` passes them to uvicorn): their
# requests carry the client's own address (IP allow-lists, sign-in lockout); anyone else's headers are ignored.
TRUSTED_PROXIES = env.networks("PORTFOLIO_TRUSTED_PROXIES", ["127.0.0.1", "::1"])
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    }
}

# --- Logging --------------------------------------------------------------------------------------
LOG_LEVEL = env.choice("PORTFOLIO_LOG_LEVEL", "INFO", LOG_LEVELS)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "portfolio.requestcontext.RequestIdLogFilter"},
        "redact": {"()": "portfolio.redaction.RedactSecretsFilter"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id", "redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler (DEBUG only) has no redacting filter: its records go to the root's.
        "django": {"handlers": []},
        "django.db.backends": {"level": "WARNING"},
        # The audit chain's external anchor (audit.tasks.anchor_head) is logged whatever the level above.
        "portfolio.audit.anchor": {"level": "INFO"},
    },
}
