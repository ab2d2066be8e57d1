"""How a composite's hops are told apart in usage: each hop's event id is its request's with ``-<hop>``
appended, counting from 1. The first hop's id ends in ``suffix(1)``; a cascade's hops (at most three) share
everything before their one-digit suffix."""

from __future__ import annotations


def suffix(hop: int) -> str:
    return f"-{hop}"


def of_hop(request_id: str, hop: int) -> str:
    return f"{request_id}{suffix(hop)}"
