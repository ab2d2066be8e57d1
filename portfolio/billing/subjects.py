"""What the price book can price, told by the apps that own it: billing sits below serving, so serving
registers how to find its endpoints and pools (in ``ServingConfig.ready``), as it registers
``VERSION_IN_USE_CHECKS`` with the registry. Stores are the registry's, known here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from portfolio.accounts.actor import Actor
from portfolio.billing.choices import PriceKind


@dataclass(frozen=True)
class Subject:
    kind: str
    id: str
    name: str


# kind -> a function from a name to its subject (None: no such thing), and one listing those an actor may
# see (None: all of them, for the price book's form, which only admins get)
FINDERS: dict[str, Callable[[str], Subject | None]] = {}
LISTERS: dict[str, Callable[[Actor | None], list[Subject]]] = {}
# kind -> why a subject of it takes no price of its own (None: it does), asked before a price is set
REFUSERS: dict[str, Callable[[Subject], str | None]] = {}
# kind -> those of its subjects that take a price, in one query (the price form's choices); else every one
PRICEABLE: dict[str, Callable[[], list[Subject]]] = {}


def register(
    kind: str,
    *,
    find: Callable[[str], Subject | None],
    listing: Callable[[Actor | None], list[Subject]],
    refusal: Callable[[Subject], str | None] | None = None,
    priceable: Callable[[], list[Subject]] | None = None,
) -> None:
    """``refusal`` and ``priceable`` go together: the subjects the one refuses, the other leaves out."""
    FINDERS[kind] = find
    LISTERS[kind] = listing
    if refusal is not None:
        REFUSERS[kind] = refusal
    if priceable is not None:
        PRICEABLE[kind] = priceable


def refusal(subject: Subject) -> str | None:
    """Why ``subject`` may not be priced (a price nothing would ever be charged at), or None."""
    refuser = REFUSERS.get(subject.kind)
    return refuser(subject) if refuser else None


def stores(actor: Actor | None = None) -> list[Subject]:
    """The artifact stores this installation writes to (the configured one; billing prices per store):
    every team's artifacts are in it, so every reader may see it."""
    return [Subject(PriceKind.STORE, settings.ARTIFACT_STORE, settings.ARTIFACT_STORE)]


register(
    PriceKind.STORE,
    find=lambda name: next((s for s in stores() if s.name == name), None),
    listing=stores,
)


def find(kind: str, name: str) -> Subject | None:
    finder = FINDERS.get(kind)
    return finder(name) if finder else None


def listing(kind: str, actor: Actor | None = None) -> list[Subject]:
    """The subjects of ``kind`` that ``actor`` may see (its ``visible_to``), or all of them (None)."""
    lister = LISTERS.get(kind)
    return lister(actor) if lister else []


def priceable(kind: str) -> list[Subject]:
    """Every subject of ``kind`` a price may be set for (``refusal`` says why not of the others)."""
    lister = PRICEABLE.get(kind)
    return lister() if lister else listing(kind)
