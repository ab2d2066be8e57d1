"""Rate limits and budgets, atomic in Redis: reserve at admission (an upper bound of the request's
tokens and cost), settle to the actual usage afterwards, release on every error path. Many concurrent
requests therefore can never together exceed a limit or a budget.

Commands go through the gateway's pipelined connection (redis_pipe.py): admission is one round trip,
and the settlement is returned as commands for the caller to send with the usage event in another.

Every counter has a time to live (a minute's, or the month's and a day), and settling never creates one:
a request that outlives its minute finds its per-minute counter gone and leaves it gone (an INCRBY there
would make a key that never expires).

Admission reserves on each counter and compares what it got with the limit, giving back what it reserved
when one refuses, and sets a counter's time to live only when it creates it: six Redis commands a request
with every limit set, not fourteen (reading each counter before adding to it, and a time to live every
time), as this script runs on every request (benchmarks/README.md, "Where the remaining tail comes from").
A counter given a seed (the month's spend on the ledger, measured off the request path) is read first too.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.exceptions import NoScriptError, ResponseError

from serving.gateway import inflight
from serving.gateway.redis_pipe import ClientPipe, RedisPipe

# KEYS: revoked set, rpm counter, tpm counter, monthly token counter, monthly money counter (micro-units),
#       the gateway process's in-flight ledger (see inflight.py), the team's and the department's monthly
#       money counters (hard-limited budgets, micro-units: the team's of calls to other teams' endpoints,
#       the department's of calls to other departments' endpoints; statements charge nothing else)
# ARGV: key id, rpm limit, tpm limit, tokens to reserve, token budget, money budget, money to reserve,
#       seconds to the end of the minute, seconds to the end of the month (a limit of -1 means none),
#       the request's ledger field and entry, the team's limit and seed, the department's limit and seed,
#       money to reserve on the team's counter and on the department's (0: free on that statement), the
#       key's token spend and money spend this month, the seeds of its budget counters ('': none)
ADMIT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'revoked', 0, 0} end
local minute_left, month_left = tonumber(ARGV[8]), tonumber(ARGV[9])
local reserve = tonumber(ARGV[4])
-- {reason, counter, amount, limit, time to live of a new counter, retry after, the least the counter holds}
local checks = {
  {'rpm', KEYS[2], 1, tonumber(ARGV[2]), minute_left + 1, minute_left},
  {'tpm', KEYS[3], reserve, tonumber(ARGV[3]), minute_left + 1, minute_left},
  {'budget', KEYS[4], reserve, tonumber(ARGV[5]), month_left + 86400, month_left, ARGV[18]},
  {'money', KEYS[5], tonumber(ARGV[7]), tonumber(ARGV[6]), month_left + 86400, month_left, ARGV[19]},
  {'team_budget', KEYS[7], tonumber(ARGV[16]), tonumber(ARGV[12]), nil, month_left, ARGV[13]},
  {'department_budget', KEYS[8], tonumber(ARGV[17]), tonumber(ARGV[14]), nil, month_left, ARGV[15]},
}
for i, check in ipairs(checks) do
  local reason, key, amount, limit, ttl, retry, seed = unpack(check)
  if limit >= 0 then
    -- A budget counter is never below the month's spend on the ledger (the seed): one Redis lost
    -- (restart, eviction, FLUSHDB) starts from it, and one made before the seed was measured (a budget
    -- set mid-month) is raised to it. Raised, never added to: the ledger has only settled calls, and those
    -- counted here since the counter was made are among them. (What was in flight at a raise is then
    -- under-counted until the ledger has it, a few minutes.)
    if seed and seed ~= '' then
      local held = redis.call('GET', key)
      if not held then redis.call('SET', key, seed, 'EX', month_left + 86400)
      elseif tonumber(held) < tonumber(seed) then redis.call('INCRBY', key, tonumber(seed) - tonumber(held)) end
    end
    local now = redis.call('INCRBY', key, amount)
    if now == amount and ttl then redis.call('EXPIRE', key, ttl) end  -- created by this call
    if now > limit then
      -- Refused: give back what this call reserved, on this counter and the ones before it.
      for j = i, 1, -1 do
        if checks[j][4] >= 0 then redis.call('DECRBY', checks[j][2], checks[j][3]) end
      end
      return {reason, retry, limit - (now - amount)}
    end
  end
end
if KEYS[6] ~= 'gw:-' then redis.call('HSET', KEYS[6], ARGV[10], ARGV[11]) end
return {'ok', 0, 0}
"""

# KEYS: the in-flight ledger, tpm counter, monthly token counter, monthly money counter, the team's and
#       the department's money counters ('gw:-': none)
# ARGV: the request's ledger field, tokens to add (negative: to give back), money to add, money to add
#       to the team's counter, money to add to the department's, then what was reserved of each (the same
#       order). An entry no longer in the ledger was reaped (inflight.py), its reservation given back
#       then: the actual amounts are added, not the difference.
SETTLE = """
local reaped = KEYS[1] ~= 'gw:-' and redis.call('HDEL', KEYS[1], ARGV[1]) == 0
local function add(key, i)
  local amount = tonumber(ARGV[i])
  if reaped then amount = amount + tonumber(ARGV[i + 4]) end
  if key ~= 'gw:-' and amount ~= 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, amount) end
end
add(KEYS[2], 2)
add(KEYS[3], 2)
add(KEYS[4], 3)
add(KEYS[5], 4)
add(KEYS[6], 5)
return 1
"""

# An admission whose reply was lost (the connection dropped, the reply late past the pipe's watchdog) may
# have reserved or not: its in-flight entry says which. KEYS as SETTLE's; ARGV: the entry's field, then the
# amounts to give back (negative). Only a reservation still entered is given back, and only once.
RELEASE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local function add(key, amount)
  if key ~= 'gw:-' and amount ~= 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, amount) end
end
add(KEYS[2], tonumber(ARGV[2]))
add(KEYS[3], tonumber(ARGV[2]))
add(KEYS[4], tonumber(ARGV[3]))
add(KEYS[5], tonumber(ARGV[4]))
add(KEYS[6], tonumber(ARGV[5]))
return 1
"""

# KEYS: a key's monthly counters to start from its spend (the token counter, the money counter, or both)
# ARGV: the spend for each, in the same order, then the time to live of a counter made here
RAISE = """
local ttl = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  local seed, held = tonumber(ARGV[i]), redis.call('GET', key)
  if not held then redis.call('SET', key, seed, 'EX', ttl)
  elseif tonumber(held) < seed then redis.call('INCRBY', key, seed - tonumber(held)) end
end
return 1
"""


@dataclass(frozen=True)
class Reservation:
    """What admission took; settling gives back the difference to the actual usage."""

    tpm_key: str | None
    token_budget_key: str | None
    money_key: str | None
    tokens: int
    money_micros: int
    ledger: tuple[str, str] | None = None  # (ledger key, field) of the in-flight entry
    team_key: str | None = None  # the team's hard-limit counter, when reserved on
    department_key: str | None = None  # the department's, when reserved on
    team_micros: int = 0  # reserved on the team's counter
    department_micros: int = 0  # reserved on the department's


@dataclass(frozen=True)
class SpendCaps:
    """The hard limits of the caller's team and department this month (micro-units; None: none) and the
    token spend already on the ledger, the least its counter holds (the seed); ``team_reserve`` and
    ``department_reserve`` are what this call may add to each: what their statements may charge for it
    (a call to the team's own endpoints costs neither; one to another team of the same department costs
    the team, and the department nothing, as the owning team is credited what the caller pays)."""

    team_id: int
    department_id: int
    team: tuple[int, int] | None = None  # (limit, seed)
    department: tuple[int, int] | None = None
    team_reserve: int = 0
    department_reserve: int = 0
    # The month ("YYYYMM") the seeds were measured for; a call in another (the routing table not yet rebuilt
    # after midnight on the 1st) uses none: last month's spend must not start this month's counter.
    month: str | None = None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # rpm, tpm, budget (tokens), money, team_budget or department_budget
    retry_after: int = 0
    reservation: Reservation | None = None
    remaining: int = 0  # of the limit refused: what was left of it (it may be negative)


class _Month:
    """The current month's name and the seconds to its end, worked out once a month, not per request."""

    __slots__ = ("end", "name", "start")

    def __init__(self):
        self.name, self.start, self.end = "", 0.0, 0.0

    def at(self, now_ts: float) -> tuple[str, int]:
        if not self.start <= now_ts < self.end:
            now = datetime.fromtimestamp(now_ts, UTC)
            self.name = now.strftime("%Y%m")
            self.start = datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()
            self.end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC).timestamp()
        return self.name, int(self.end - now_ts)


def month_of(now_ts: float) -> tuple[str, datetime]:
    """The UTC month of ``now_ts`` ("YYYYMM", as admission names its counters) and the moment it began."""
    month = _Month()
    name, _ = month.at(now_ts)
    return name, datetime.fromtimestamp(month.start, UTC)


ADMIT_SHA = hashlib.sha1(ADMIT.encode()).hexdigest()  # noqa: S324 - the name Redis gives the script
SETTLE_SHA = hashlib.sha1(SETTLE.encode()).hexdigest()  # noqa: S324


def unknown_script(reply) -> bool:
    """Whether a reply says Redis does not have the script (restarted, or SCRIPT FLUSH): send it whole."""
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def as_eval(command: tuple) -> tuple:
    """An EVALSHA command of ours as the EVAL that also loads the script."""
    script = {ADMIT_SHA: ADMIT, SETTLE_SHA: SETTLE}[command[1]]
    return ("EVAL", script, *command[2:])


class Limiter:
    def __init__(self, pipe: RedisPipe | ClientPipe):
        self.pipe = pipe
        self._month = _Month()

    async def admit(
        self,
        key,
        *,
        tokens: int,
        money_micros: int,
        revoked_set: str,
        ledger: str | None = None,
        lost_event: dict | None = None,
        caps: SpendCaps | None = None,
    ) -> Verdict:
        """Reserve ``tokens`` and ``money_micros`` if every limit and budget allows it. With a ``ledger``,
        the request is also entered into it with ``lost_event``: what to bill if this process dies."""
        now_ts = time.time()
        minute = int(now_ts // 60)
        minute_left = 60 - int(now_ts % 60)
        month, month_left = self._month.at(now_ts)
        kid = key.key_id
        tpm_key = f"gw:tpm:{kid}:{minute}" if key.tpm_limit is not None else None
        token_key = f"gw:bt:{kid}:{month}" if key.monthly_token_budget is not None else None
        money_key = f"gw:bm:{kid}:{month}" if key.monthly_budget_micros is not None else None
        team_spend = caps.team_reserve if caps is not None and caps.team else 0
        dept_spend = caps.department_reserve if caps is not None and caps.department else 0
        team_key = f"gw:tm:{caps.team_id}:{month}" if caps is not None and team_spend else None
        dept_key = f"gw:dm:{caps.department_id}:{month}" if caps is not None and dept_spend else None
        team_cap = (caps.team if caps and team_key else None) or (-1, 0)
        dept_cap = (caps.department if caps and dept_key else None) or (-1, 0)
        if caps is not None and caps.month not in (None, month):
            team_cap, dept_cap = (team_cap[0], 0), (dept_cap[0], 0)
        # The key's spend when its record was loaded, if of this month (last month's must not start this
        # month's counters); none is sent for nothing spent, which would raise nothing.
        this_month = key.spend_month == month
        token_seed = key.token_spend if this_month and key.token_spend > 0 else ""
        money_seed = key.money_spend_micros if this_month and key.money_spend_micros > 0 else ""
        field, lost = "", b""
        if ledger is not None and lost_event is not None:
            field = lost_event["id"]
            lost = inflight.entry(
                lost_event,
                [
                    (k, n)
                    for k, n in (
                        (tpm_key, tokens),
                        (token_key, tokens),
                        (money_key, money_micros),
                        (team_key, team_spend),
                        (dept_key, dept_spend),
                    )
                    if k and n
                ],
            )
        keys_and_args = (
            8,
            revoked_set,
            f"gw:rpm:{kid}:{minute}",
            tpm_key or "gw:-",
            token_key or "gw:-",
            money_key or "gw:-",
            ledger or "gw:-",
            team_key or "gw:-",
            dept_key or "gw:-",
            kid,
            _limit(key.rpm_limit),
            _limit(key.tpm_limit),
            tokens,
            _limit(key.monthly_token_budget),
            _limit(key.monthly_budget_micros),
            money_micros,
            minute_left,
            month_left,
            field,
            lost,
            team_cap[0],
            team_cap[1],
            dept_cap[0],
            dept_cap[1],
            team_spend,
            dept_spend,
            token_seed,
            money_seed,
        )
        try:
            (reply,) = await self.pipe.execute(("EVALSHA", ADMIT_SHA, *keys_and_args))
            if unknown_script(reply):
                (reply,) = await self.pipe.execute(("EVAL", ADMIT, *keys_and_args))  # loads it for next time
        except Exception:
            if field:  # the script may have run: what it reserved must not stay held until this process ends
                ledger_key = ledger or "gw:-"
                keys = (tpm_key, token_key, money_key, team_key, dept_key)
                await self._release(ledger_key, field, keys, tokens, money_micros, team_spend, dept_spend)
            raise
        if isinstance(reply, Exception):
            raise reply
        reason, retry, remaining = reply
        reason = reason.decode() if isinstance(reason, bytes) else reason
        if reason != "ok":
            return Verdict(False, reason, int(retry), remaining=int(remaining))
        return Verdict(
            True,
            reservation=Reservation(
                tpm_key,
                token_key,
                money_key,
                tokens,
                money_micros,
                (ledger, field) if ledger else None,
                team_key,
                dept_key,
                team_spend,
                dept_spend,
            ),
        )

    async def _release(self, ledger: str, field: str, keys: tuple, tokens, money, team, department) -> None:
        """Give back an admission's reservation if its script ran (see RELEASE); best effort: with Redis
        out of reach too, the entry stays, and the in-flight reaper settles it when this process ends."""
        tpm_key, token_key, money_key, team_key, dept_key = (k or "gw:-" for k in keys)
        with contextlib.suppress(Exception):  # the admission's own error is the one raised
            await self.pipe.execute(
                ("EVAL", RELEASE, 6, ledger, tpm_key, token_key, money_key, team_key, dept_key,
                 field, -tokens, -money, -team, -department)
            )  # fmt: skip

    def settle(
        self,
        reservation: Reservation | None,
        *,
        tokens: int,
        money_micros: int,
        team_micros: int = 0,
        department_micros: int = 0,
    ) -> list[tuple]:
        """The command that corrects from reserved to actual (zero actual releases it all), to pipeline;
        its reply may ask for ``as_eval`` (``unknown_script``). ``team_micros`` and ``department_micros``:
        what the call costs the team and the department on their statements (admission.charged)."""
        if reservation is None:
            return []
        ledger, field = reservation.ledger or ("gw:-", "")
        return [
            (
                "EVALSHA",
                SETTLE_SHA,
                6,
                ledger,
                reservation.tpm_key or "gw:-",
                reservation.token_budget_key or "gw:-",
                reservation.money_key or "gw:-",
                reservation.team_key or "gw:-",
                reservation.department_key or "gw:-",
                field,
                tokens - reservation.tokens,
                money_micros - reservation.money_micros,
                team_micros - reservation.team_micros,
                department_micros - reservation.department_micros,
                reservation.tokens,
                reservation.money_micros,
                reservation.team_micros,
                reservation.department_micros,
            )
        ]


def raise_key_budgets(
    client, key_id: str, now_ts: float, *, tokens: int | None = None, money_micros: int | None = None
) -> None:
    """Raise a key's monthly budget counters (those given) to what it spent this month, as ADMIT raises
    them to the spend the key's cached record carries, but at once, before the gateways reload the key: a
    budget set or changed mid-month starts from the month's spend, not from nothing. Raised, never added
    to: what the counter counted is among that spend. Called when a budget changes, never per request."""
    month, month_left = _Month().at(now_ts)
    counters = [
        (f"gw:{name}:{key_id}:{month}", spend)  # named as admit names them
        for name, spend in (("bt", tokens), ("bm", money_micros))
        if spend is not None
    ]
    if counters:
        client.eval(
            RAISE, len(counters), *(c for c, _ in counters), *(n for _, n in counters), month_left + 86400
        )


def _limit(value) -> int:
    return -1 if value is None else int(value)
