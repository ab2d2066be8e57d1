"""Single sign-on's configuration, as ``portfolio.settings`` parsed it from ``PORTFOLIO_OIDC_*``."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class OidcConfig:
    """One Keycloak realm and this platform's confidential client in it."""

    server_url: str  # Keycloak's base URL, ending in "/"
    realm: str
    client_id: str
    client_secret: str = ""
    organisation: str = ""  # the button says "Sign in with <organisation>"
    api_audience: str = ""  # the `aud` the REST API's access tokens must name; the client id when empty
    # The realm's clients whose access tokens the REST API takes (their `azp`); this client alone when empty.
    api_clients: tuple[str, ...] = ()

    @property
    def realm_url(self) -> str:
        return f"{self.server_url}realms/{self.realm}"

    @property
    def audience(self) -> str:
        """What a realm's access token for the REST API must have among its audiences."""
        return self.api_audience or self.client_id

    @property
    def token_clients(self) -> frozenset[str]:
        """The clients (``azp``) whose access tokens the REST API takes: any client of the realm may add an
        audience mapper naming this API, and a hard-coded claim mapper (a role, a group, a subject) to its
        tokens; only the clients named here are trusted with what theirs say."""
        return frozenset(self.api_clients or (self.client_id,))

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"OidcConfig(realm_url={self.realm_url!r}, client_id={self.client_id!r})"


def current() -> OidcConfig | None:
    """The configuration, or None when single sign-on is off (read each time: tests switch it)."""
    values = settings.OIDC
    return OidcConfig(**values) if values else None


def source_label() -> str:
    """Where rows with source "sso" come from, as pages and refusals say it: "Acme single sign-on"."""
    config = current()
    organisation = config.organisation if config is not None else ""
    return f"{organisation} single sign-on" if organisation else "single sign-on"
