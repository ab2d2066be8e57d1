"""The gateway's own HTTP paths and the handler of each (an endpoint's routes to deployments are routing.py's).

A handler is ``async handler(gateway, scope, receive, send, headers, request_id, event_id)``: it answers
through ``send``, or raises GatewayError, which the gateway answers in OpenAI's shape. A request's handler is
found with one dictionary lookup by (method, path), then by path alone for a route open to any method, then
among the prefix routes in the order they were added.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

ANY = "*"  # a route's method that matches every method

Handler = Callable[..., Awaitable[None]]


class Routes:
    """The paths one gateway serves, each added once."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        if prefix:
            if any(m == method and p == path for m, p, _ in self._prefixes):
                raise ValueError(f"{method} {path}* is routed already")
            self._prefixes.append((method, path, handler))
        else:
            if (method, path) in self._exact:
                raise ValueError(f"{method} {path} is routed already")
            self._exact[(method, path)] = handler

    def find(self, method: str, path: str) -> Handler | None:
        handler = self._exact.get((method, path)) or self._exact.get((ANY, path))
        if handler is not None:
            return handler
        for route_method, start, candidate in self._prefixes:
            if path.startswith(start) and route_method in (ANY, method):
                return candidate
        return None
