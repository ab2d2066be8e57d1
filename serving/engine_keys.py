"""The bearer key of one engine: derived from ``PORTFOLIO_ENGINE_KEY_SECRET`` and the replica's id, never
stored. The node agent starts the engine with it; the gateway, the agent's probes and adapter calls, the canary
judge and serving-speed measurements present it."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def engine_key(replica_id: int) -> str:
    return hmac.new(settings.ENGINE_KEY_SECRET, f"replica:{replica_id}".encode(), hashlib.sha256).hexdigest()
