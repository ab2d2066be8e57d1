"""A platform job's call through the gateway (distillation's teacher, an eval run's rows) that met a passing
failure, tried again a bounded number of times: failing the job would lose every answer before it, each
one billed. The gateway or the endpoint's replica unreachable, rate limited, overloaded or restarting is
passing; any other refusal (400, 401, 403, 404...) is not, and neither is a timeout: the endpoint already
had the gateway's whole upstream timeout, and the gateway bills a request it timed out at its worst case
(504), so another try would bill it again and wait as long again. The client waits a little longer than
the gateway (``client_timeout``), so the gateway's 504, metered and saying why, normally comes first.

The limits are constants, never a client's choice: each try may be a billed call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
from django.conf import settings

TRIES = 4  # the first call and three more
BACKOFF_S = 1.0  # the wait before the second try, doubled before each further one
WAIT_CAP_S = 30.0  # the longest wait between two tries, a Retry-After included
TRANSIENT_STATUSES = frozenset({429, 502, 503})  # not 504: the gateway timed the endpoint out, billed
# The gateway's clock for the endpoint starts after the client's (the request read, a replica chosen).
TIMEOUT_MARGIN_S = 5.0
# Refused connections, resets, a connection dropped before the answer.
TRANSIENT_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class CallFailed(ValueError):
    """The call was refused for good, or failed on its last try: the message says how."""


def client_timeout() -> float:
    """The job's HTTP client's timeout: the gateway's upstream timeout and ``TIMEOUT_MARGIN_S`` more."""
    return settings.GATEWAY_UPSTREAM_TIMEOUT + TIMEOUT_MARGIN_S


def retry_delay(response: httpx.Response | None, tried: int) -> float:
    """Seconds to wait before the try after ``tried``: the answer's Retry-After (seconds or an HTTP date)
    where it gives one, else a backoff doubling from ``BACKOFF_S``; at most ``WAIT_CAP_S``."""
    delay = BACKOFF_S * 2 ** (tried - 1)
    given = (response.headers.get("retry-after") or "").strip() if response is not None else ""
    if given.isdigit():
        delay = float(given)
    elif given:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):  # else the backoff
            delay = parsedate_to_datetime(given).timestamp() - time.time()
    return min(max(delay, 0.0), WAIT_CAP_S)


def post(
    client: httpx.Client,
    path: str,
    body: dict,
    *,
    endpoint: str,
    who: str = "",
    waiting: Callable[[], object] = lambda: None,
    timeout: float | None = None,
) -> httpx.Response:
    """The 200 answer to ``body`` posted to ``path`` for ``endpoint``. A passing failure is tried again,
    ``TRIES`` times in all; any other refusal, or the last try's, raises ``CallFailed`` at once, naming
    ``who`` (the endpoint as the job's detail says it; its name by default). ``waiting`` is called before
    and about once a second during each wait: a job's heartbeat and cancel check, which stops the waits by
    raising. ``timeout``: each try's, in place of the client's."""
    each_try = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
    for tried in range(1, TRIES + 1):
        response: httpx.Response | None = None
        try:
            response = client.post(path, json=body, timeout=each_try)
        except TRANSIENT_ERRORS as exc:
            if tried == TRIES:
                raise CallFailed(
                    f"The gateway did not answer: {exc.__class__.__name__}, {tried} tries (calling {endpoint})."
                ) from None
        except httpx.TimeoutException as exc:  # a ConnectTimeout (nothing sent) is passing, caught above
            raise CallFailed(
                f"{who or endpoint} did not answer in time ({exc.__class__.__name__}); not asked again: "
                "the gateway bills a request it timed out at its worst case."
            ) from None
        else:
            if response.status_code == 200:
                return response
            if response.status_code not in TRANSIENT_STATUSES or tried == TRIES:
                times = f" ({tried} tries)" if tried > 1 else ""
                raise CallFailed(
                    f"{who or endpoint} answered {response.status_code}{times}: {response.text[:300]}"
                )
        deadline = time.monotonic() + retry_delay(response, tried)
        while True:
            waiting()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 1.0))
    raise AssertionError("unreachable: the last try returns or raises")
