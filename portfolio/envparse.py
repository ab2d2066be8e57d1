"""Strict parsing of settings from environment variables.

A bad value stops start-up with a message naming the variable; secrets may also come from a file named
by ``NAME_FILE`` (Docker/Kubernetes secrets), which wins over nothing but is refused next to ``NAME``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# Who may sign in with a password: everyone, only platform admins (break-glass), or nobody.
LOCAL_SIGN_IN = ("everyone", "admins", "off")
MAX_API_CLIENTS = 32
# The most any integer setting may be unless it says otherwise (sizes in bytes do): no count or duration here
# needs more, and a larger one overflowed a timer or a date only once running (a node's heartbeat thread died,
# every session save failed), where start-up should have refused it (found by review).
INTEGER_CEILING = 2**31 - 1


class Env:
    """Reads typed values from a mapping (``os.environ`` by default) and fails loudly on bad ones."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        file_name = self.environ.get(f"{name}_FILE")
        if value is not None and file_name:
            raise ImproperlyConfigured(f"Set either {name} or {name}_FILE, not both.")
        if file_name:
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                raise ImproperlyConfigured(
                    f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}"
                ) from exc
        if value is not None and value.strip() == "":
            return None
        return value

    def _parse(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value.strip())
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected {expected}.") from exc

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ImproperlyConfigured(f"{name} must be set (or {name}_FILE).")
        return value

    def flag(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool:
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(value)

        return self._parse(name, default, parse, "one of true/false/1/0/yes/no/on/off")

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._parse(name, default, int, "an integer")
        maximum = INTEGER_CEILING if maximum is None else maximum
        if minimum is not None and value < minimum or value > maximum:
            raise ImproperlyConfigured(f"{name}={value} is out of range [{minimum}, {maximum}].")
        return value

    def csv_list(self, name: str, default: list[str]) -> list[str]:
        return self._parse(
            name, default, lambda v: [item.strip() for item in v.split(",") if item.strip()], "a comma list"
        )

    def choice(self, name: str, default: str, choices: set[str]) -> str:
        value = self.text(name, default) or default
        if value not in choices:
            raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected one of {sorted(choices)}.")
        return value

    def path(self, name: str, default: Path) -> Path:
        return self._parse(name, default, lambda v: Path(v).expanduser().resolve(), "a path")

    def secret_list(self, name: str, *, min_length: int = 1) -> list[str]:
        """Secrets separated by commas or new lines (a file of one per line), each at least ``min_length``."""
        value = self.raw(name)
        items = [item.strip() for item in re.split(r"[,\n]", value or "") if item.strip()]
        if any(len(item) < min_length for item in items):
            raise ImproperlyConfigured(f"{name}: every entry must be at least {min_length} characters.")
        return items

    def networks(self, name: str, default: list[str]) -> list[str]:
        """A comma list of IP addresses or networks (``10.0.0.0/8``), each checked as uvicorn reads it (which
        silently ignores a network with host bits set); ``*``, ``0.0.0.0/0`` and ``::/0`` are refused."""

        def parse(value: str) -> list[str]:
            items = [item.strip() for item in value.split(",") if item.strip()]
            for item in items:
                try:
                    network = ipaddress.ip_network(item)
                except ValueError:
                    # ValueError names nothing: _parse says which variable
                    network = ipaddress.ip_network(item, strict=False)
                    raise ImproperlyConfigured(
                        f"{name}: {item} has host bits set and would be ignored; write the network "
                        f"({network}) or the proxy's own address."
                    ) from None
                if network.prefixlen == 0:
                    raise ImproperlyConfigured(
                        f"{name}: {item} would trust every address, as '*' would; list the proxies' addresses."
                    )
            return items

        return self._parse(name, default, parse, "IP addresses or networks such as 10.0.0.5,172.16.0.0/12")

    def database(self) -> dict[str, Any] | None:
        """The connection of ``DATABASE_URL`` (with ``DATABASE_PASSWORD`` over the URL's), or None if unset."""
        url = self.text("DATABASE_URL")
        return None if url is None else database_settings(url, self.text("DATABASE_PASSWORD"))

    def oidc(self, *, production: bool) -> dict[str, Any] | None:
        """Single sign-on's OpenID Connect client: the server's base URL (Keycloak's, without ``/realms``),
        the realm, the client id and its secret (or ``_FILE``), all four or none; None: sign-on is off.
        ``PORTFOLIO_OIDC_ORGANISATION`` names the button ("Sign in with ..."), the realm by default;
        ``PORTFOLIO_OIDC_API_AUDIENCE`` is the audience the realm's access tokens for the REST API must
        name, the client id by default (Keycloak's audience mapper puts it there); ``_API_CLIENTS`` the
        clients whose tokens it takes."""
        names = ("SERVER_URL", "REALM", "CLIENT_ID", "CLIENT_SECRET")
        values = {name: self.text(f"PORTFOLIO_OIDC_{name}") for name in names}
        if not any(values.values()):
            return None
        missing = [f"PORTFOLIO_OIDC_{name}" for name, value in values.items() if not value]
        if missing:
            raise ImproperlyConfigured(
                f"Single sign-on needs {', '.join(missing)} too (or none of PORTFOLIO_OIDC_*, to turn it off)."
            )
        url = values["SERVER_URL"] or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ImproperlyConfigured(
                f"PORTFOLIO_OIDC_SERVER_URL={url!r} is not valid: expected Keycloak's base URL such as "
                "https://keycloak.example.com (the realm goes in PORTFOLIO_OIDC_REALM)."
            )
        if production and parts.scheme != "https":
            raise ImproperlyConfigured("PORTFOLIO_OIDC_SERVER_URL must use https in production.")
        realm = values["REALM"] or ""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", realm):
            raise ImproperlyConfigured(f"PORTFOLIO_OIDC_REALM={realm!r} is not valid: expected a realm name.")
        return {
            "server_url": url.rstrip("/") + "/",
            "realm": realm,
            "client_id": values["CLIENT_ID"] or "",
            "client_secret": values["CLIENT_SECRET"] or "",
            "organisation": self.text("PORTFOLIO_OIDC_ORGANISATION") or realm,
            "api_audience": (self.text("PORTFOLIO_OIDC_API_AUDIENCE") or values["CLIENT_ID"] or "").strip(),
            "api_clients": self._api_clients(values["CLIENT_ID"] or ""),
        }

    def _api_clients(self, client_id: str) -> tuple[str, ...]:
        """``PORTFOLIO_OIDC_API_CLIENTS``: the realm's clients (comma-separated ids) whose access tokens the
        REST API takes, by their ``azp``; this platform's client alone by default."""
        raw = self.text("PORTFOLIO_OIDC_API_CLIENTS") or client_id
        names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
        if not names or len(names) > MAX_API_CLIENTS or any(len(name) > 255 for name in names):
            raise ImproperlyConfigured(
                f"PORTFOLIO_OIDC_API_CLIENTS={raw[:80]!r} is not valid: expected 1 to {MAX_API_CLIENTS} client "
                "ids of the realm, comma-separated."
            )
        return names

    def local_sign_in(self, *, oidc: Mapping[str, str] | None) -> str:
        """Who may sign in with a password (``PORTFOLIO_LOCAL_SIGN_IN``): ``everyone`` (the default), only
        ``admins`` (a break-glass way in when the realm is down) or nobody (``off``). The last two need single
        sign-on (``oidc``), or nobody else could sign in at all."""
        value = self.choice("PORTFOLIO_LOCAL_SIGN_IN", "everyone", set(LOCAL_SIGN_IN))
        if value != "everyone" and not oidc:
            raise ImproperlyConfigured(
                f"PORTFOLIO_LOCAL_SIGN_IN={value} needs single sign-on (PORTFOLIO_OIDC_*): without it "
                + ("nobody but the platform admins" if value == "admins" else "nobody")
                + " could sign in. Set PORTFOLIO_OIDC_* or PORTFOLIO_LOCAL_SIGN_IN=everyone."
            )
        return value

    def oidc_sync(self, oidc: dict[str, str] | None) -> dict[str, Any] | None:
        """The directory sync's service-account client (``PORTFOLIO_OIDC_SYNC_CLIENT_ID`` and its
        ``_SECRET`` or ``_SECRET_FILE``, both or neither) and its interval; None: no sync."""
        client_id = self.text("PORTFOLIO_OIDC_SYNC_CLIENT_ID")
        secret = self.text("PORTFOLIO_OIDC_SYNC_CLIENT_SECRET")
        if not client_id and not secret:
            return None
        if not client_id or not secret:
            raise ImproperlyConfigured(
                "The directory sync needs both PORTFOLIO_OIDC_SYNC_CLIENT_ID and PORTFOLIO_OIDC_SYNC_CLIENT_SECRET."
            )
        if oidc is None:
            raise ImproperlyConfigured(
                "PORTFOLIO_OIDC_SYNC_CLIENT_ID is set but single sign-on is not (PORTFOLIO_OIDC_SERVER_URL...)."
            )
        return {
            "client_id": client_id,
            "client_secret": secret,
            "interval": self.integer("PORTFOLIO_OIDC_SYNC_SECONDS", 300, minimum=30, maximum=86400),
        }

    def redis_url(self) -> str | None:
        """``REDIS_URL`` with ``REDIS_PASSWORD`` put into it (quoted), or None if unset."""
        url = self.text("REDIS_URL")
        return None if url is None else with_redis_password(url, self.text("REDIS_PASSWORD"))


# What identifies a PostgreSQL connection in Django's settings: a child process given the same connects alike.
CONNECTION_KEYS = ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


def database_settings(url: str, password: str | None = None) -> dict[str, Any]:
    """Django's connection settings from a ``postgresql://`` URL; every libpq parameter of its query string
    (``sslmode``, ``sslrootcert``, ``application_name``...) is kept in ``OPTIONS``."""
    from psycopg.conninfo import conninfo_to_dict

    if not url.startswith(("postgres://", "postgresql://")):
        raise ImproperlyConfigured("DATABASE_URL must be a postgresql:// URL.")
    try:
        info: dict[str, Any] = conninfo_to_dict(url)
    except Exception as exc:
        # psycopg's message may quote the URL, password included: it is not repeated here.
        raise ImproperlyConfigured(
            f"DATABASE_URL is not a valid PostgreSQL URL ({exc.__class__.__name__}): percent-encode special "
            "characters of the password, or keep it in DATABASE_PASSWORD(_FILE)."
        ) from None
    url_password = info.pop("password", "")
    return {
        "NAME": info.pop("dbname", "portfolio"),
        "USER": info.pop("user", ""),
        "PASSWORD": password or url_password,
        "HOST": info.pop("host", ""),
        "PORT": info.pop("port", ""),
        "OPTIONS": info,
    }


def database_url(db: Mapping[str, Any], *, with_password: bool = True) -> str:
    """The ``postgresql://`` URL that ``database_settings`` reads back into ``db``'s connection: every part
    quoted (a password with ``@/#?`` stays one password), a unix socket folder and the options as parameters."""
    user, password = str(db.get("USER") or ""), str(db.get("PASSWORD") or "")
    auth = quote(user, safe="")
    if with_password and password:
        auth += ":" + quote(password, safe="")
    query = {key: str(value) for key, value in (db.get("OPTIONS") or {}).items()}
    host, port = str(db.get("HOST") or ""), str(db.get("PORT") or "")
    netloc = ""
    if host.startswith("/"):
        query["host"] = host
        if port:
            query["port"] = port
    elif host:
        netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    name = quote(str(db.get("NAME") or ""), safe="")
    url = f"postgresql://{auth + '@' if auth else ''}{netloc}/{name}"
    return url + ("?" + urlencode(query, quote_via=quote) if query else "")


def with_redis_password(url: str, password: str | None) -> str:
    if password is None:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ImproperlyConfigured("REDIS_PASSWORD needs a redis:// or rediss:// REDIS_URL.")
    if parts.password:
        raise ImproperlyConfigured(
            "REDIS_URL already carries a password: set it there or in REDIS_PASSWORD, not both."
        )
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()
