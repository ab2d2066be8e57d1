"""What the price book can price, told by the apps that own it: billing sits below serving, so serving
registers how to find its endpoints and pools (in ``ServingConfig.ready``), as it registers
``VERSION_IN_USE_CHECKS`` with the registry. Stores are the registry's, known here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from portfolio.billing.choices import PriceKind


@dataclass(frozen=True)
class Subject:
    kind: str
    id: str
    name: str


# kind -> a function from a name to its subject (None: no such thing), and one listing them all
FINDERS: dict[str, Callable[[str], Subject | None]] = {}
LISTERS: dict[str, Callable[[], list[Subject]]] = {}


def register(
    kind: str, *, find: Callable[[str], Subject | None], listing: Callable[[], list[Subject]]
) -> None:
    FINDERS[kind] = find
    LISTERS[kind] = listing


def stores() -> list[Subject]:
    """The artifact stores this installation writes to (the configured one; billing prices per store)."""
    return [Subject(PriceKind.STORE, settings.ARTIFACT_STORE, settings.ARTIFACT_STORE)]


register(
    PriceKind.STORE,
    find=lambda name: next((s for s in stores() if s.name == name), None),
    listing=stores,
)


def find(kind: str, name: str) -> Subject | None:
    finder = FINDERS.get(kind)
    return finder(name) if finder else None


def listing(kind: str) -> list[Subject]:
    lister = LISTERS.get(kind)
    return lister() if lister else []
