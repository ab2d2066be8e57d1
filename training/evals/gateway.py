"""The one place an eval run calls an endpoint: through the gateway, with a short-lived service key of the
running team scoped to the endpoint (as distillation calls its teacher), so every row's call is metered and
billed to that team like any other call."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from portfolio import direct_http
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.billing.choices import PriceKind
from portfolio.billing.pricing import PriceBook, priced
from serving.gateway import hop_ids, usage
from serving.gateway import services as key_services
from serving.gateway.models import UsageEvent
from serving.models import Endpoint
from serving.services import composite
from training import gateway_retries

SYSTEM = Actor.for_system("training.evals")


class GatewayRefused(Exception):
    """The gateway (or the endpoint behind it) did not answer a row: the run fails with this reason."""


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float
    input_tokens: int
    output_tokens: int


class KeyedClient(httpx.Client):
    """An HTTP client of the gateway, with the id of the service key it calls with. A call made after
    ``SERVICE_KEY_RENEW_AFTER`` since the key's last renewal renews it first: work of any length keeps its
    key, which lapses a lifetime after the worker stops calling."""

    key_id: int = 0
    renewed_at: float = 0.0

    def __init__(self, *args, **kwargs):
        # The key and the rows' prompts never go through a proxy of the worker's environment.
        super().__init__(*args, **{**kwargs, **direct_http.httpx_options()})
        self._renewing = threading.Lock()  # an eval run calls from a pool of threads: one renews

    def request(self, *args, **kwargs):
        renew_after = key_services.SERVICE_KEY_RENEW_AFTER.total_seconds()
        if self.key_id and time.monotonic() - self.renewed_at >= renew_after:
            with self._renewing:
                if time.monotonic() - self.renewed_at >= renew_after:
                    self._renew()
        return super().request(*args, **kwargs)

    def _renew(self) -> None:
        try:
            key_services.renew_service_key(actor=SYSTEM, key_pk=self.key_id)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()  # a pool thread's own connection, opened for the renewal
        self.renewed_at = time.monotonic()


@contextlib.contextmanager
def client_for(team: Team, endpoint_name: str, label: str) -> Iterator[KeyedClient]:
    """An HTTP client of the gateway holding a service key of ``team`` for ``endpoint_name``, revoked after.
    A composite endpoint's key may call the endpoints it calls too (the gateway checks every hop)."""
    found = Endpoint.objects.filter(name=endpoint_name).first()
    scopes = [endpoint_name, *(composite.hop_names(found) if found is not None else [])]
    with transaction.atomic():
        key, secret = key_services.create_key(
            actor=SYSTEM,
            team=team,
            name=label[:100],
            scopes=scopes,
            service=True,
            expires_at=timezone.now() + key_services.SERVICE_KEY_LIFETIME,
        )
    try:
        with KeyedClient(
            base_url=settings.GATEWAY_INTERNAL_URL,
            timeout=gateway_retries.client_timeout(),  # the gateway's 504 first
            headers={"Authorization": f"Bearer {secret}"},
        ) as client:
            client.key_id, client.renewed_at = key.pk, time.monotonic()
            yield client
    finally:
        with transaction.atomic():
            key_services.revoke_key(actor=SYSTEM, key=key)


def revoke_left_keys(team_id: int, labels: list[str]) -> int:
    """Revoke the service keys named ``labels`` still active: those of a run whose worker died before its
    ``client_for`` could revoke them."""
    return key_services.revoke_service_keys(actor=SYSTEM, team_id=team_id, names=labels)


def ask(
    client: httpx.Client,
    endpoint_name: str,
    messages: list[dict],
    max_tokens: int,
    *,
    timeout: float | None = None,
    waiting: Callable[[], object] = lambda: None,
) -> Answer:
    """One row's chat completion, greedy, timed from request to full answer. A passing failure (429, 502, 503,
    a dropped connection) is tried again (``gateway_retries``): one would fail the whole run, every row
    before it billed. The latency is the answered try's: a wait to try again is the gateway's refusal, not
    the endpoint's speed. ``timeout`` (each try's) and ``waiting`` (called during the waits between tries, to
    stop them by raising): as ``gateway_retries.post`` takes them."""
    body = {"model": endpoint_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    try:
        response = gateway_retries.post(
            client, "/v1/chat/completions", body, endpoint=endpoint_name, timeout=timeout, waiting=waiting
        )
    except gateway_retries.CallFailed as exc:
        raise GatewayRefused(str(exc)) from None
    except httpx.HTTPError as exc:  # any other failure of the transport (a proxy, a local protocol error)
        raise GatewayRefused(f"The gateway did not answer: {exc.__class__.__name__}.") from None
    latency = response.elapsed.total_seconds()  # from sending to the whole answer read
    try:
        body = response.json()
        text = body["choices"][0]["message"]["content"] or ""
        usage = body.get("usage") or {}
        return Answer(
            text=str(text),
            latency_s=latency,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        raise GatewayRefused(f"{endpoint_name} answered something that is not a chat completion.") from None


def metered_cost(key_id: int, via: str, requests: int, *, settle_seconds: float = 10.0) -> Decimal | None:
    """What billing charged for the calls a key made to the composite endpoint ``via``: every hop's usage
    event priced at its own endpoint's price (a composite has no price of its own, and the answer's usage
    names only the last hop). The gateway writes an event just after its answer, and the flusher moves
    events into PostgreSQL in batches: this moves them itself and waits until each of the ``requests``
    has its first hop's event and the count holds still (at most ``settle_seconds``). None when no event
    arrived, or when a hop had no price in force (``priced``): billing charges that hop at cost, a share of
    its compute known at the month's end, and its events' 0 is no cost of the calls."""
    rows = UsageEvent.objects.filter(api_key_id=key_id, via=via)
    deadline, seen = time.monotonic() + settle_seconds, -1
    while True:
        while usage.flush():
            pass
        count = rows.count()
        requests_seen = rows.filter(event_id__endswith=hop_ids.suffix(1)).count()  # one first hop a request
        if (requests_seen >= requests and count == seen) or time.monotonic() > deadline:
            break
        seen = count
        time.sleep(0.25)
    if not count:
        return None
    # Prices start on the hour (UTC): the version in force at an hour's start prices its calls, as billing's.
    hours = rows.order_by().annotate(hour=TruncHour("at", tzinfo=UTC)).values_list("endpoint_id", "hour")
    book = PriceBook.load(kinds=[PriceKind.ENDPOINT])
    for endpoint_id, hour in hours.distinct():
        if endpoint_id is None or not priced(book.at(PriceKind.ENDPOINT, endpoint_id, hour)):
            return None
    return rows.aggregate(cost=Sum("cost"))["cost"] or Decimal(0)
