"""Requests in flight, per gateway process, in Redis: so that a gateway process killed mid-request loses
no usage event and keeps no reservation.

Admission adds an entry to its process's ledger (in the same Lua script that reserves the tokens and the
money) and settlement removes it (in the same pipeline that writes the usage event). Each process keeps
an ``alive`` key with a time to live while it runs. The usage flusher reaps the ledgers of processes
whose key has expired: each entry becomes a usage event with status 502 and error ``gateway_lost``
(what the engine produced is not known, so no tokens are billed) and its reservation is released. A
process only cut off from Redis that long may still settle a reaped request: settling then adds the actual
usage (limits.SETTLE), and the flusher stores its real event (a composite's: its hops' events) in place of
the lost one (usage.py).
"""

from __future__ import annotations

import time

import orjson

PROCESSES = "portfolio:gw:processes"
# Event ids reaped: a request reaped while its process was only cut off from Redis may still settle, and
# the flusher then stores its real event instead of the lost one (usage.py). Score: the lost event's time
# (its admission) as on the stream, so that the flusher marks that hour for the rollup each time it
# replaces it, also again after a flusher died between its commit and its marks; kept a day from then.
REAPED = "portfolio:gw:reaped"
REAPED_SECONDS = 86_400
ALIVE_SECONDS = 60  # far above any pause of a live gateway; a reaped live process would bill twice
LOST_STATUS, LOST_ERROR = 502, "gateway_lost"


def alive_key(process_id: str) -> str:
    return f"portfolio:gw:alive:{process_id}"


def ledger_key(process_id: str) -> str:
    return f"portfolio:gw:inflight:{process_id}"


def register_commands(process_id: str) -> list[tuple]:
    """What a gateway process sends at start and then every few seconds while it runs."""
    return [("SADD", PROCESSES, process_id), ("SET", alive_key(process_id), "1", "EX", ALIVE_SECONDS)]


def entry(event: dict, releases: list[tuple[str, int]]) -> bytes:
    """A ledger entry: the usage event as it would be written if the process died now, and the
    reservation to give back (counter key, amount)."""
    return orjson.dumps({"event": event, "release": releases})


# KEYS: the dead process's ledger, the usage stream, the set of processes, REAPED (optional); ARGV: the
# process id. Atomic, so that two flushers reaping at once cannot both write an entry's event. The time in
# REAPED is read back from the event as encoded (cjson writes 14 digits), the one the flusher stores.
REAP = """
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local lost = cjson.decode(entries[i])
  for _, release in ipairs(lost.release) do
    if redis.call('EXISTS', release[1]) == 1 then redis.call('DECRBY', release[1], release[2]) end
  end
  local event = cjson.encode(lost.event)
  redis.call('XADD', KEYS[2], '*', 'e', event)
  if KEYS[4] then redis.call('ZADD', KEYS[4], cjson.decode(event).at, lost.event.id) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return #entries / 2
"""


def reap(client, stream: str) -> int:
    """Turn the ledgers of gateway processes that stopped without settling into usage events on
    ``stream``; the number of requests found."""
    found = 0
    for member in client.smembers(PROCESSES):
        process_id = member.decode() if isinstance(member, bytes) else member
        if client.exists(alive_key(process_id)):
            continue
        found += int(client.eval(REAP, 4, ledger_key(process_id), stream, PROCESSES, REAPED, process_id))
    return found


def reaped(client) -> dict[str, float]:
    """The reaped requests admitted in the last day, each with its lost event's time (epoch seconds); older
    ones are forgotten here, as the flusher reads them (reaps may be weeks apart)."""
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(REAPED, "-inf", time.time() - REAPED_SECONDS)
    pipe.zrange(REAPED, 0, -1, withscores=True)
    members = pipe.execute()[1]
    return {member.decode(): at for member, at in members}
